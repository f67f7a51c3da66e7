"""configs/fashion_mnist.py with the paper's coupled L2 on alpha (docs/method.md, faithfully).

Command:
  python -m bnn_jax.main --config=configs/fashion_mnist_paper.py --workdir=/tmp/fashion_mnist_paper

`lambda_alpha * sum(alpha ** 2)` in the loss (`optimizer.scale_l2_mode = "coupled"`, lambda 5e-4),
everything else as configs/fashion_mnist.py, whose default decouples the term (see its docstring).
"""

from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.optimizer.scale_l2_mode = "coupled"
  return c
