"""The dashboard at /ui: server-rendered pages over the same services the API calls (app.ui.router)."""
