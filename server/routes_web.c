/* routes_web.c — the web console: GET / (index.html) and GET /web/{name}
 * (its scripts, styles and uPlot), served from the bytes embedded at build
 * time (web/assets.h). Open, like /health: the page holds no secret and
 * embeds no key; every call it makes goes through the public API with the
 * key the user typed (kept in the browser's sessionStorage).
 *
 * Headers: the asset's Content-Type, X-Content-Type-Options nosniff, a
 * strict Content-Security-Policy (scripts, styles and fetches from this
 * origin only, no inline script, no framing), Referrer-Policy no-referrer,
 * and Cache-Control no-cache with a strong ETag: browsers revalidate every
 * load and get 304 while the binary is the same. */
#include <string.h>

#include "http.h"
#include "web/assets.h"

/* uPlot sizes its elements through the CSSOM (element.style), which
 * style-src does not govern, so no 'unsafe-inline' is needed. img-src
 * data: is for the inline favicon (no request, no 404 in the console). */
static const char csp[] =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

static const web_asset *find_asset(const char *name)
{
    for (const web_asset *a = web_assets; a->name; a++)
        if (!strcmp(a->name, name)) return a;
    return NULL;
}

static enum MHD_Result send_asset(http_req *r, const web_asset *a)
{
    const char *inm =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
    int fresh = inm && (strstr(inm, a->etag) != NULL || !strcmp(inm, "*"));
    struct MHD_Response *resp =
        fresh ? MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT)
              : MHD_create_response_from_buffer(a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    if ((!fresh &&
         MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, a->content_type) != MHD_YES) ||
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, a->etag) != MHD_YES ||
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache") != MHD_YES ||
        MHD_add_response_header(resp, "Content-Security-Policy", csp) != MHD_YES ||
        MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff") != MHD_YES ||
        MHD_add_response_header(resp, "Referrer-Policy", "no-referrer") != MHD_YES) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    return http_send_response(r, fresh ? 304 : 200, resp);
}

enum MHD_Result route_web_index(http_req *r)
{
    const web_asset *a = find_asset("index.html");
    if (!a) /* a build whose asset list lost index.html: say so rather than crash */
        return http_send_error(r, 404, NULL, "unknown_url",
                               "This binary was built without the web console.");
    return send_asset(r, a);
}

enum MHD_Result route_web_asset(http_req *r)
{
    const web_asset *a = find_asset(r->param);
    if (!a)
        return http_send_error(r, 404, NULL, "unknown_url",
                               "The web console has no file named '%s'.", r->param);
    return send_asset(r, a);
}
