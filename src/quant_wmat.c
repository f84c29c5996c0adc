/* quant_wmat.c — typed weight-matrix views (quant.h): an F32 view and one
 * dequantised row, for every type the kernels take (qmatmul_deq.h). */
#include "prefixd/quant.h"

#include "qmatmul_deq.h"

pd_wmat pd_wmat_f32(const float *data, int rows, int cols)
{
    return (pd_wmat){.data = data,
                     .type = PD_Q_F32,
                     .rows = rows,
                     .cols = cols,
                     .row_bytes = (size_t)cols * sizeof(float)};
}

void pd_wmat_row_f32(const pd_wmat *W, int r, float *out)
{
    PD_ASSERT(r >= 0 && r < W->rows);
    pd__deq_span(W, r, 0, W->cols, out);
}
