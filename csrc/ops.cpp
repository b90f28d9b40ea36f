// Every op schema of the library, in one place (DESIGN §2). Device kernels register their
// implementations in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu (the same stem on both devices);
// fake kernels and autograd formulas live in quantnoise_kernels/ops/ (one module per family).
#include <torch/library.h>

TORCH_LIBRARY(quantnoise, m) {
  // Fused Quant-Noise on the blocks of `weight` (DESIGN §3.1). Block b (block_size consecutive
  // entries of a row of weight.reshape(out, -1)) is noised with probability p, drawn from
  // Philox keyed by (seed, offset, b). The kinds (csrc/include/quantnoise/noise_kinds.h):
  // noise="drop": noised blocks become 0, kept blocks are scaled by 1/(1-p) if rescale.
  // noise="fake_quant": noised blocks become (clamp(rint(w / scale) + zero_point, quant_min,
  // quant_max) - zero_point) * scale, kept entries are clamped to that grid's range; scale
  // float32 and zero_point int32, [1] (per tensor) or [out] (per output channel).
  // noise="centroid": a noised block becomes its nearest row of `centroids` [K, block_size]
  // (squared L2, ties to the lowest index), kept blocks are copied. straight_through selects the
  // backward (ops/noise.py); the forward ignores it. Returns a new contiguous tensor; weight is
  // never written. rows (int64 [out], >= 0): weight holds rows `rows` of a larger weight and gets
  // their mask (block j of row i is keyed as block j of row rows[i]): noising the looked-up rows of
  // an embedding equals looking up in the noised table; per-channel parameters are weight's rows'.
  m.def(
      "block_noise(Tensor weight, Tensor seed, float p, int block_size, int offset=0, bool rescale=True, "
      "bool straight_through=True, str noise='drop', Tensor? centroids=None, Tensor? scale=None, "
      "Tensor? zero_point=None, int quant_min=0, int quant_max=255, Tensor? rows=None) -> Tensor");
  // The weight gradient of block_noise given grad, the gradient of its output (weight's shape):
  // straight-through, grad times 1/(1-p) (drop with rescale) or times the clamp mask
  // (fake_quant: 0 where weight lies outside the grid's range); straight_through=False also 0 on
  // the noised blocks (the forward's mask, redrawn; rows as block_noise's). One pass; a new
  // contiguous tensor.
  m.def(
      "block_noise_backward(Tensor grad, Tensor weight, Tensor seed, float p, int block_size, int offset=0, "
      "bool rescale=True, bool straight_through=True, str noise='drop', Tensor? centroids=None, "
      "Tensor? scale=None, Tensor? zero_point=None, int quant_min=0, int quant_max=255, Tensor? rows=None) -> Tensor");

  // y = input . block_noise(weight)^T + bias, fused: the noised weight is never materialised
  // (CPU: noised chunk by chunk into an L2-sized buffer). The mask is that of block_noise with the
  // same noise arguments, so the two ops agree exactly.
  m.def(
      "noisy_linear(Tensor input, Tensor weight, Tensor? bias, Tensor seed, float p, int block_size, int offset=0, "
      "bool rescale=True, bool straight_through=True, str noise='drop', Tensor? centroids=None, "
      "Tensor? scale=None, Tensor? zero_point=None, int quant_min=0, int quant_max=255) -> Tensor");
  // grad_output . block_noise(weight): the input gradient of noisy_linear.
  m.def(
      "noisy_linear_backward_input(Tensor grad_output, Tensor weight, Tensor seed, float p, int block_size, "
      "int offset=0, bool rescale=True, str noise='drop', Tensor? centroids=None, Tensor? scale=None, "
      "Tensor? zero_point=None, int quant_min=0, int quant_max=255) -> Tensor");
  // Batched k-means E-step (DESIGN §3.2): for x [B, N, D] and centroids [B, K, D] (float32/16,
  // bfloat16; fp32 arithmetic), codes[b, n] = argmin_k ||x[b, n] - centroids[b, k]||^2 with ties
  // to the LOWEST k, and dist[b, n] = that squared distance (float32). Fused: never an N x K
  // matrix. Ranking rule in csrc/include/quantnoise/kmeans.h.
  m.def("kmeans_assign(Tensor x, Tensor centroids) -> (Tensor codes, Tensor dist)");
  // k-means M-step statistics: sums[b, k] = sum of x[b, n] over n with codes[b, n] == k (float32),
  // counts[b, k] = their number (int64). codes must lie in [0, n_centroids) (checked).
  m.def("kmeans_update(Tensor x, Tensor codes, int n_centroids) -> (Tensor sums, Tensor counts)");
  // Activation-aware k-means (issue 10; csrc/include/quantnoise/kmeans_weighted.h): as
  // kmeans_assign/kmeans_update with the distance (x - c)^T H (x - c), where point n of problem b
  // uses h[b, n % G] (float32 [B, G, D, D] symmetric, or [B, G, D] diagonal). assign: codes and
  // that weighted distance. update: per cluster k, h_sums = sum of the points' H, hx_sums = sum of
  // H x, sums = sum of x (float32) and counts (int64); the centroid is h_sums^-1 hx_sums.
  m.def("kmeans_assign_weighted(Tensor x, Tensor centroids, Tensor h) -> (Tensor codes, Tensor dist)");
  m.def(
      "kmeans_update_weighted(Tensor x, Tensor codes, Tensor h, int n_centroids) -> (Tensor h_sums, Tensor hx_sums, "
      "Tensor sums, Tensor counts)");
  // k-means++ seeding (DESIGN §3.2; rule in csrc/include/quantnoise/kmeanspp.h).
  m.def("kmeanspp_init(Tensor x, Tensor first, Tensor uniforms) -> Tensor");
  m.def("kmeanspp_step(Tensor x, Tensor dmin, Tensor centroid) -> (Tensor dmin_out, Tensor chunk_weights)");
  m.def("kmeanspp_sample(Tensor dmin, Tensor chunk_weights, Tensor target) -> Tensor");
  // PQ-compressed weights (DESIGN §3.3, csrc/include/quantnoise/pq.h). Block (o, j) of
  // W.reshape(out, -1) is centroids[codes[o][j]] (int8 centroids: (c - zero_point) * scale, one
  // value or one per centroid). codes are [out, n_blocks] or, with codes_transposed, the packed
  // [n_blocks, out] layout the lookup kernels read (ops.pq_pack_codes).
  // pq_decode: the dense W of `shape` (dtype: out_dtype, else centroids' float dtype / float32).
  m.def(
      "pq_decode(Tensor codes, Tensor centroids, int[] shape, Tensor? centroid_scale=None, "
      "Tensor? centroid_zero_point=None, bool codes_transposed=False, ScalarType? out_dtype=None) -> Tensor");
  // pq_linear: y = fq(x) . W^T + bias without materialising W. path='lut': per row, a table of
  // x_block . centroid for every (block, centroid), then sums of table entries picked by the
  // codes; 'tile': decode tiles of W and multiply; 'auto' picks by size. act_bits > 0 fake-quantizes
  // x first (affine, per tensor or per row; straight-through in the backward). Output: x's dtype.
  m.def(
      "pq_linear(Tensor x, Tensor codes, Tensor centroids, Tensor? bias=None, Tensor? centroid_scale=None, "
      "Tensor? centroid_zero_point=None, bool codes_transposed=False, int act_bits=0, "
      "str act_granularity='tensor', str path='auto') -> Tensor");
  // pq_embedding: rows `indices` of the decoded [out, n_blocks*block_size] table (only those rows
  // are decoded); out shape indices.shape + [dim]. codes in the interchange layout.
  m.def(
      "pq_embedding(Tensor indices, Tensor codes, Tensor centroids, Tensor? centroid_scale=None, "
      "Tensor? centroid_zero_point=None, ScalarType? out_dtype=None) -> Tensor");
  // pq_linear_backward: pq_linear's gradients from the codes, never the dense weight: per input
  // block, grad_out is scatter-added into K bins by code, then grad_x = bins . C and
  // grad_centroids += bins^T . x (x: the activations the forward multiplied). Returns (grad_x with
  // grad_out's shape[:-1] + [in] and dtype, or [0] unless input_grad; grad_centroids [K, block_size]
  // float32 (float64 for float64 grad_out), or [0] unless centroids_grad).
  m.def(
      "pq_linear_backward(Tensor grad_out, Tensor? x, Tensor codes, Tensor centroids, Tensor? centroid_scale=None, "
      "Tensor? centroid_zero_point=None, bool codes_transposed=False, bool input_grad=True, "
      "bool centroids_grad=True) -> (Tensor, Tensor)");
  // pq_embedding_backward: the centroid gradient of pq_embedding, [n_centroids, block_size] float32
  // (float64 for float64 grad_out): the sum of grad_out's blocks by code (interchange codes).
  m.def("pq_embedding_backward(Tensor grad_out, Tensor indices, Tensor codes, int n_centroids) -> Tensor");
}
