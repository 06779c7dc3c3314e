"""The local server: the app (`app.create_app`, `app.serve`), the model manager, one answer skeleton for
Ollama's `/api/*` and OpenAI's `/v1/*` routes, errors and the static web chat. Imports everything below
it (text, model, infer, store); only `cli` imports it. See docs/architecture.md ("Server")."""
