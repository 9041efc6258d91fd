"""Renderers: the values the jobs return, shown as terminal text and tables, Markdown, HTML with its
chart, OpenMetrics, and the ``--json`` documents of every command."""
