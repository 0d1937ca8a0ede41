"""The bundled demo model repository, served by a bare `ortserve serve`.

It holds one model, `iris`: a logistic-regression classifier of the Iris flowers whose ONNX
graph is written by hand from the fitted parameters (see README.md beside this file, and
`python -m ortserve.demo.build_demo` to rebuild it). The repository is plain package data, so
this room imports nothing beyond the standard library; scikit-learn, which only the build script
needs, is a development dependency.
"""

from pathlib import Path

DEMO_REPOSITORY: Path = Path(__file__).parent / "models"
"""Directory of the demo model repository: `<DEMO_REPOSITORY>/iris/config.pbtxt` and `iris/1/model.onnx`."""

__all__ = ["DEMO_REPOSITORY"]
