"""The fastai scripts' shared callback (run in fastai's venv): the validation accuracy and
loss after every epoch as a JSON line, the form bench_time_to_accuracy.curve reads."""

import json

from fastai.vision.all import Callback


class PrintEpoch(Callback):
    order = 100  # after the Recorder has the epoch's metrics

    def after_epoch(self) -> None:
        names = list(self.recorder.metric_names[1:-1])
        values = dict(zip(names, self.recorder.values[-1], strict=False))
        print(json.dumps({"epoch": self.epoch, "valid_accuracy": float(values["accuracy"]),
                          "valid_loss": float(values["valid_loss"])}), flush=True)
