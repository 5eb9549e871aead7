"""fastllm.kernels: the public functional API of fastllm's kernels (installed from the top-level `kernels/`).

Each op has an eager PyTorch reference in `fastllm.kernels.reference` and a Triton implementation in
`fastllm.kernels.triton`; the dispatch rule is in ../shared/DESIGN.md. The ops land with their issues.
"""
