"""Exact graph rewrites for exported attention (no pruning logic lives here).

Heads, KV groups and FFN neurons are groups of the one dependency graph
(:mod:`onnxsparse.graph`, :mod:`onnxsparse.graph.kinds`).  Some exporter forms
hide the head axis from per-op rules; these modules rewrite them into an
equivalent graph the rules read, and :func:`onnxsparse.passes.attention_rewrites.rewrite_attention`
runs them before the analysis:

* :mod:`.packed_qkv`: Hugging Face / timm packed Q/K/V (and Phi-3's packed gate/up) projections
  split into separate projections (column slices of the packed weight);
* :mod:`.sdpa_lowering`: dynamo's heads-into-batch ``K^T`` back into one Transpose;
* :mod:`.tf_einsum`: tf2onnx's lowered Keras ``MultiHeadAttention`` Einsums back into 4-D MatMuls.
"""
