/* web/assets.h — the web console's files, embedded in the binary at build
 * time (server/web/embed.py writes build/server/web_assets.c from
 * server/web/ and uPlot's dist files). Read-only, static storage. */
#ifndef PREFIXD_SERVER_WEB_ASSETS_H
#define PREFIXD_SERVER_WEB_ASSETS_H

#include <stddef.h>

typedef struct web_asset {
    const char *name;         /* base name, served at /web/<name> */
    const char *content_type; /* from the extension */
    const char *etag;         /* strong ETag, quoted: a hash of data */
    const unsigned char *data;
    size_t len;
} web_asset;

/* Every asset, then one entry whose name is NULL. */
extern const web_asset web_assets[];

#endif
