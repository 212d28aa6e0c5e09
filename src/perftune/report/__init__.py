"""HTML and PDF reports of a campaign bundle: pure pages (`pages`), SVG plots (`plots`), the document
(`html`), the shell that reads the bundle and writes the file (`render`, `bundle`, `pdf`)."""
