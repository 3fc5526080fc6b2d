"""A stand-in node process for the launcher's tests (no ROS): ``-p exit_after:=S -p code:=C``
exits with C after S seconds; without ``exit_after`` it runs until SIGINT or SIGTERM, then prints
``stopped <name>`` and exits 0."""
import signal
import sys
import threading

args = dict(a.split(":=", 1) for a in sys.argv[1:] if ":=" in a)
stop = threading.Event()
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: stop.set())
if "exit_after" in args:
    stop.wait(float(args["exit_after"]))
    sys.exit(int(args.get("code", "0")))
stop.wait()
print(f"stopped {args.get('__node', '?')}", flush=True)
