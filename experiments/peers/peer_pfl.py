"""pfl-research 0.6.0 (PyTorch backend) on a peers workload, written as pfl's own benchmarks set it up.

The pieces are pfl's: ``FederatedDataset.from_slices`` over the clients of the data file with pfl's
``random`` user sampler, ``SimulatedBackend`` with ``WeightByDatapoints`` (FedAvg weights clients by their
rows), ``FederatedAveraging`` with ``NNAlgorithmParams``, ``PyTorchModel`` with a local
``torch.optim.SGD`` and a central SGD of learning rate 1.0 (so the server step is the weighted mean of the
clients' models), ``NNTrainHyperParams`` (local epochs, batch size, learning rate) and
``CentralEvaluationCallback`` scoring the test set after every round. The model is peer_common's (the same
layers as gossipsoup's) with the ``loss`` and ``metrics`` methods pfl asks of a module.

Differences that are pfl's design, kept as they are: its ``random`` user sampler draws each cohort member
independently (a client can appear twice in a round), and its ``Dataset.iter`` cuts a client's rows into
batches in stored order, the same order every epoch (no reshuffle). ``evaluation_frequency`` (pfl's
per-client metrics before and after local training, work no other peer does) is set past the last round,
so only the first round pays it.

    python peer_pfl.py --workload w1 --data w1_seed0.npz --seed 0
"""

from __future__ import annotations

import argparse

import numpy as np
import peer_common as pc
import torch
import torch.nn.functional as F


def pfl_module(base: torch.nn.Module):
    """The peer_common model with pfl's ``loss`` and ``metrics`` methods added (pfl's PyTorch contract)."""
    from pfl.metrics import Weighted

    class Module(type(base)):  # type: ignore[misc]
        def loss(self, x, y, eval=False):  # noqa: A002 - pfl's keyword
            self.eval() if eval else self.train()
            return F.cross_entropy(self(x), y)

        @torch.no_grad()
        def metrics(self, x, y, eval=True):  # noqa: A002
            self.eval() if eval else self.train()
            logits = self(x)
            loss = F.cross_entropy(logits, y, reduction="sum").item()
            correct = (logits.argmax(1) == y).sum().item()
            return {"loss": Weighted(loss, len(y)), "accuracy": Weighted(correct, len(y))}

    base.__class__ = Module
    return base


def run(work: pc.Workload, data: pc.Data, seed: int) -> tuple[float, float]:
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.callback.central_evaluation import CentralEvaluationCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics
    from pfl.model.pytorch import PyTorchModel

    torch.manual_seed(seed)
    np.random.seed(seed)  # pfl's user sampler draws from numpy's global generator
    users = {k: [x, y] for k, (x, y) in enumerate(data.clients)}
    train = FederatedDataset.from_slices(users, get_user_sampler("random", list(users)))
    central = Dataset(raw_data=[data.x_test, data.y_test])

    module = pfl_module(pc.build_model(work, data))
    params = [p for p in module.parameters() if p.requires_grad]
    model = PyTorchModel(
        model=module, local_optimizer_create=torch.optim.SGD, central_optimizer=torch.optim.SGD(params, 1.0)
    )
    backend = SimulatedBackend(training_data=train, val_data=None, postprocessors=[WeightByDatapoints()])

    clock = pc.LoopClock()
    accuracy: list[float] = []

    class Clock(TrainingProcessCallback):
        """Starts the loop clock after pfl's initial central evaluation, stops it after the last round's."""

        def on_train_begin(self, *, model):
            clock.begin()
            return Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            for name, value in aggregate_metrics:
                if str(name) == "Central val | accuracy":
                    accuracy.append(float(value.overall_value if hasattr(value, "overall_value") else value))
            clock.stop()
            return False, Metrics()

    eval_params = NNEvalHyperParams(local_batch_size=1000)
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=work.rounds,
            evaluation_frequency=work.rounds + 1,
            train_cohort_size=work.clients_per_round,
            val_cohort_size=None,
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=work.lr, local_num_epochs=work.epochs, local_batch_size=work.batch_size
        ),
        model_eval_params=eval_params,
        # the evaluation runs first so that Clock sees its metrics in the same round
        callbacks=[CentralEvaluationCallback(central, model_eval_params=eval_params, frequency=1), Clock()],
    )
    return clock.seconds, accuracy[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=sorted(pc.WORKLOADS), required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = pc.WORKLOADS[args.workload]
    loop_s, acc = run(work, pc.load(args.data), args.seed)
    pc.report(work, loop_s, acc, peer="pfl")


if __name__ == "__main__":
    main()
