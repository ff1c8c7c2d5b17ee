"""HTTP services a devbox exposes, and the preview proxy that serves them."""
