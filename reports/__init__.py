"""HTML reports of the workflow's results: one self-contained page per model, and an index.

Run from the repository root (this package is not installed); it needs jinja2 and pandas, not torch:

    python -m reports.render page --manifest results/demo-mamba2/report-manifest.json \
        --out reports-out/demo-mamba2.html
    python -m reports.render index --out reports-out/index.html results/*/report-manifest.json

Modules: `data` (the manifest and the files it lists), `page` (tables and charts of one model),
`svg` (charts as inline SVG), `render` (templates, command line). See docs/workflow.md.
"""
