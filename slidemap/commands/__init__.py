"""CLI sub-command modules. Each exposes ``register(subparsers)`` and imports heavy
libraries (TensorFlow, titiler, streamlit) only inside its handlers so that
``slidemap --help`` stays fast."""
