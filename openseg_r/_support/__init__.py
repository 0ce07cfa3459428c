"""Plumbing every layer may use and none owns: caches, SQLite files, the artifact store,
file checks, single flights, cancellation, image decoding and rendering."""
