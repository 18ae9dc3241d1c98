"""The `onnxprune` command: a thin click front end over the `onnxprune` library."""
import os as _os
import signal as _signal
import sys as _sys


def _interrupted_while_starting(signum, frame) -> None:
    """SIGINT while the command still imports numpy, onnx and ONNX Runtime (about 0.5 s):
    nothing has been read or written yet, so leave at once and quietly. `main.run` puts
    Python's KeyboardInterrupt back before any work starts (the commands clean up on it)."""
    _os.write(2, b"interrupted; nothing was written\n")
    _os._exit(130)


def _started_as_command() -> bool:
    """The `onnxprune` script or `python -m onnxprune_cli` (argv[0] is '-m' while Python
    imports the package); a program or test that imports us keeps its own Ctrl-C."""
    argv0 = _sys.argv[0] if _sys.argv else ""
    return argv0 == "-m" or _os.path.basename(argv0).removesuffix(".exe") == "onnxprune"


if _started_as_command():
    _signal.signal(_signal.SIGINT, _interrupted_while_starting)
