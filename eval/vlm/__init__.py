"""Real PyTorch VLMs around our JAX vision tower: `llava_bridge` and `mllama_bridge` feed the
(unlearned) tower's features into a transformers LLaVA or Mllama, and `llava_answerer` asks a
LLaVA checkpoint about image files."""
