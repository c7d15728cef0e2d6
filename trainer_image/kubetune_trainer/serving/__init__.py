"""A trained model behind a chat API: the loaded model (``inference``) and the
OpenAI-compatible HTTP server (``openai_server``)."""
