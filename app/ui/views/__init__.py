"""The dashboard's pages, one module per area; app.ui.router puts them together."""
