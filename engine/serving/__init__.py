"""Serving the model with vLLM: the server process (vllm_server), the SID-trie logits processor
vLLM loads (vllm_plugin) and the trie spec and request gates both sides share (vllm_trie)."""
