"""The ROS 2 node shells; each is ``python -m robot_runtime.nodes.<name>``.

Importing this package (which happens before a node's module and before numpy) keeps
numpy's BLAS on the calling thread. Its default pool on a 2-core machine is one extra
worker that, after every small matrix product, spins for a while waiting for the next:
called at 20-300 Hz from a loop, that worker burned about 40% of a core in every node.
Nodes multiply small matrices; a thread pool only costs them. Set OPENBLAS_NUM_THREADS
yourself to override. (Torch and ONNX Runtime keep their own thread settings.)
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
