"""``streammas demo``: the service's main job on bundled real data, with a built-in producer, in one command.

What it does:

1. builds a stream from data that ships with the installed packages (scikit-learn's ``load_digits``, 8x8
   images scaled to [0, 1]; river's ``ImageSegments`` if scikit-learn is missing) in *recurring regimes*:
   three groups of digit classes, each under its own pixel permutation, shown A B C A B C, each for a few
   passes (:func:`streammas.tools.evaluation.streams.make_stream`, benchmark ``recurring-digits``);
2. starts the real service (:class:`streammas.service.Service`, in a thread) on a ZeroMQ PULL socket bound
   to a free port on 127.0.0.1, with a state directory, checkpoints and optional metrics;
3. a producer thread pushes the stream through that socket in wire format v1, batch by batch;
4. shows progress, stops the service as a signal would (final checkpoint), and reports the plateaus and
   consolidations the service found *without being told where a regime ends*, and how well each regime is
   still reconstructed at the end compared with a plain online learner with no memory
   (``reg_lambda=0, hard_buffer=0, replay=0``) trained on the same batches.

``--quick`` runs a reduced stream (used by the tests).

The package is split by concern:

* :mod:`~streammas.tools.demo.runner`: the stream, the service in a thread, its producer, the comparison learner;
* :mod:`~streammas.tools.demo.display`: the progress shown while it learns;
* :mod:`~streammas.tools.demo.report`: what the demo measured, and the report printed at the end;
* :mod:`~streammas.tools.demo.cli`: the ``streammas demo`` command.
"""

from streammas.tools.demo.cli import add_arguments, run_command
from streammas.tools.demo.report import DemoResult, render_report
from streammas.tools.demo.runner import make_demo_stream, run_demo

__all__ = ["DemoResult", "add_arguments", "make_demo_stream", "render_report", "run_command", "run_demo"]
