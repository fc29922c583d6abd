"""rjn's remote helper: runs on the remote host, standard library only (Python 3.8+).

One module per concern (server, slurm, env, watch, runs, tree, files, probe, serve) over four
they share (say, places, processes, jupyter_api), entered through main.py: one action per
call, answered with JSON lines on stdout ({"log": ...} while it works, then {"ok": {...}} or
{"error": {...}}). It travels as a zipapp with rjn/shared (what both sides share), cached on
the remote under its content hash (rjn/helper_client/boot.py), and keeps its files in
<project>/.rjn/, private to the user. Imports inside are relative, so they work the same in
the zipapp and here.
"""
