/*
 * conv_direct.h -- stride-1 convolution without an im2col matrix
 * (conv_direct.c; used by cnn.c, not part of the API).
 *
 * Images are channels-last.  "Padded" images carry their zero border in
 * memory, so every window lies inside the buffer and the micro-kernel reads
 * the image in place: output pixel (y, x) of a kh x kw window reads the
 * padded rows y .. y+kh-1, pixels x .. x+kw-1, and for each kernel row i
 * the kw*cin values from pixel x on are one contiguous run, as are the
 * matching kw*cin rows of the weight matrix (kh, kw, cin, cout).
 *
 * Every output element is computed by one thread in an order that does not
 * depend on the thread count: the forward and dX split output rows, dW
 * splits its own tiles and sums the batch over fixed chunks of output rows
 * in chunk order.
 */
#ifndef FASTNN_CONV_DIRECT_H
#define FASTNN_CONV_DIRECT_H

#include <stdint.h>

/* out (n, hp-kh+1, wp-kw+1, cout) = act(conv(in, W) + bias): in (n, hp, wp,
   cin) padded, W (kh*kw*cin, cout), bias (cout) or NULL. */
void fastnn_conv_padded(float *out, const float *in, const float *W, const float *bias,
                        int64_t n, int64_t hp, int64_t wp, int64_t cin, int64_t cout,
                        int64_t kh, int64_t kw, int act, float slope);

/* dW (kh*kw*cin, cout) = sum over the outputs (n, oh, ow) of the window of
   in (n, hp, wp, cin, padded) times dZ (n, oh, ow, cout); oh = hp-kh+1,
   ow = wp-kw+1.  Overwritten. */
void fastnn_conv_padded_dw(float *dW, const float *in, const float *dZ, int64_t n, int64_t hp,
                           int64_t wp, int64_t cin, int64_t cout, int64_t kh, int64_t kw);

/* dX (n, h, w, c) = the full correlation of dZ (n, oh, ow, oc) with W (kh,
   kw, c, oc) for stride 1, padding (ph, pw): a gather per input pixel, no
   workspace; for few input channels c, where a GEMM over c columns wastes
   the register tile. */
void fastnn_conv_dx_gather(float *dX, const float *dZ, const float *W, int64_t n, int64_t h,
                           int64_t w, int64_t c, int64_t oc, int64_t kh, int64_t kw,
                           int64_t ph, int64_t pw);

/* Input and output channels from which a 3x3 stride-1 convolution runs by
   Winograd F(2x2, 3x3) (fastnn_conv3x3_winograd). */
#define WG_MIN_CHANNELS 16

/* out (n, hp-2, wp-2, cout) = act(conv(in, W) + bias) for a 3x3 kernel, as
   fastnn_conv_padded, by Winograd F(2x2, 3x3) with ws (ws_size floats) as
   workspace.  Returns 0, having written nothing to out, when it does not
   apply (odd output sizes, fewer than WG_MIN_CHANNELS channels, too little
   workspace, a weight beyond its limit): the caller runs the direct
   convolution.  The choice does not depend on the thread count. */
int fastnn_conv3x3_winograd(float *out, const float *in, const float *W, const float *bias,
                            int64_t n, int64_t hp, int64_t wp, int64_t cin, int64_t cout, int act,
                            float slope, float *ws, int64_t ws_size);

/* The same with in (n, ih, iw, cin) unpadded, read as if zero-padded by
   (ph, pw), 0 <= ph, pw <= 2: out (n, ih+2ph-2, iw+2pw-2, cout); the tiles
   whose window crosses the border are gathered (zeros outside), so no
   padded copy is made.  Same results as fastnn_conv3x3_winograd over the
   padded copy, bit for bit. */
int fastnn_conv3x3_winograd_pad(float *out, const float *in, const float *W, const float *bias,
                                int64_t n, int64_t ih, int64_t iw, int64_t ph, int64_t pw,
                                int64_t cin, int64_t cout, int act, float slope, float *ws,
                                int64_t ws_size);

/* dW (9 cin, cout) of a 3x3 kernel, as fastnn_conv_padded_dw, by Winograd
   F(3x3, 2x2) with ws (ws_size floats) as workspace.  Returns 0 when it
   does not apply (as fastnn_conv3x3_winograd) or when in or dZ holds a
   value beyond its limit (inf, NaN, huge): dW is then not valid and the
   caller runs the direct dW.  The result does not depend on the thread
   count. */
int fastnn_conv3x3_winograd_dw(float *dW, const float *in, const float *dZ, int64_t n,
                               int64_t hp, int64_t wp, int64_t cin, int64_t cout, float *ws,
                               int64_t ws_size);

#endif /* FASTNN_CONV_DIRECT_H */
