"""`oomtrace ui` and `oomtrace show -o html`: a kill's post-mortem, the kill
list, top and pressure as HTML pages rendered from the collector's own API.
Pages are built server-side with inline SVG (so one kill exports as a single
file that needs no script); the only script keeps the list live."""
