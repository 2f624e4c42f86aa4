"""Model shapes shared by the benchmark scripts (random weights in the real configs' shapes)."""

from sharpjax.models import RopeConfig

LLAMA3_ROPE = RopeConfig(theta=500000.0, kind="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                         original_max_position_embeddings=8192)
SIZES = {
    # Llama-3.2-3B-Instruct's config.json shape.
    "3b": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_layers=28, num_heads=24,
               num_kv_heads=8, head_dim=128),
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
               num_kv_heads=8, head_dim=64),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                 num_kv_heads=2, head_dim=16),
}
