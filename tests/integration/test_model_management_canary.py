"""Canary under load: a new version added, its weight moved 0 -> 50 -> 0 (rollback) -> 100, the old
version removed, all while clients keep sending. Zero failed requests, and the answers follow
the weights: exactly where a weight is 0 or 100, within binomial bounds where it is 50."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format, text_format

from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import model_config_pb2 as mc
from tests import models
from tests.harness import channel_to, serve_in_thread
from tests.wire import infer_request, model_stats, outputs_of

FACTORS = {"1": 1.0, "2": 2.0}
X = np.array([[1.0, 2.0, 3.0]], np.float32)
CLIENTS = 4


@dataclass(frozen=True)
class Answer:
    sent: float
    received: float
    version: str
    error: str = ""


def weights_config(policy: str, weights: str = "") -> str:
    text = f"version_policy: {{ {policy} }}\n"
    if weights:
        text += f'parameters {{ key: "version_weights" value: {{ string_value: "{weights}" }} }}\n'
    return json_format.MessageToJson(text_format.Parse(text, mc.ModelConfig()))


class Load:
    """CLIENTS threads sending requests without pause, each on its own channel, recording every answer."""

    def answered_since(self, moment: float) -> int:
        return sum(1 for a in list(self.answers) if a.sent >= moment)

    def wait_for_answers(self, moment: float, count: int, timeout_s: float = 30.0) -> None:
        """Until `count` requests sent after `moment` were answered (a loaded machine just takes longer)."""
        stop = time.monotonic() + timeout_s
        while self.answered_since(moment) < count and time.monotonic() < stop:
            time.sleep(0.02)

    def __init__(self, target: str) -> None:
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(target,)) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _client(self, target: str) -> None:
        from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc

        channel = channel_to(target)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        request = infer_request("canary", {"x": X})
        found = self.answers  # list.append is atomic under the GIL
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                response = stub.ModelInfer(request, timeout=30)
                y = outputs_of(response)["y"]
                version = response.model_version
                ok = np.array_equal(y, X * np.float32(FACTORS.get(version, math.nan)))
                found.append(Answer(sent, time.monotonic(), version, "" if ok else f"wrong answer {y}"))
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and fails the test
                found.append(Answer(sent, time.monotonic(), "", repr(exc)))
        channel.close()


def test_canary_under_load(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    models.save(models.scale(FACTORS["1"]), repo, "canary", 1)
    settings: dict[str, Any] = {"http_port": -1, "model_control_mode": "explicit", "load_model": "canary"}
    with serve_in_thread(repo, **settings) as srv:
        # (config sent with the load, share of version 2 afterwards or None = not checked, answers to wait for)
        steps: list[tuple[str, float | None, int]] = [
            ("", 0.0, 300),  # version 1 alone
            (weights_config("specific: { versions: [1, 2] }", "1:100,2:0"), 0.0, 300),  # 2 loaded, no traffic
            (weights_config("specific: { versions: [1, 2] }", "1:50,2:50"), 0.5, 1000),  # canary at 50%
            (weights_config("specific: { versions: [1, 2] }", "1:1,2:0"), 0.0, 300),  # rollback: a weight change
            (weights_config("specific: { versions: [1, 2] }", "1:0,2:100"), 1.0, 300),  # promoted
            (weights_config("specific: { versions: [2] }"), 1.0, 300),  # version 1 removed
        ]
        windows: list[tuple[float, float, float | None]] = []
        with Load(srv.grpc_target) as load:
            for index, (config, share, wanted) in enumerate(steps):
                if index:
                    if index == 1:
                        models.save(models.scale(FACTORS["2"]), repo, "canary", 2)
                    request = pb.RepositoryModelLoadRequest(model_name="canary")
                    request.parameters["config"].string_param = config
                    began = time.monotonic()
                    srv.stub.RepositoryModelLoad(request, timeout=60)
                    windows[-1] = (windows[-1][0], began, windows[-1][2])  # the previous step ends here
                windows.append((time.monotonic(), math.inf, share))
                load.wait_for_answers(windows[-1][0], wanted + 2 * CLIENTS)  # + those in flight at the end
                if index == 2:  # while both serve, their statistics tell them apart
                    v1, v2 = (model_stats(srv.stub, "canary", v).inference_stats.success.count for v in "12")
                    assert v1 > 20 and v2 > 20, (v1, v2)

        answers = load.answers
        failed = [a for a in answers if a.error]
        assert not failed, f"{len(failed)} of {len(answers)} requests failed, e.g. {failed[0].error}"
        assert len(answers) > 300, len(answers)
        for start, end, share in windows:
            # Only requests sent after the load returned and answered before the next began.
            inside = [a.version for a in answers if a.sent >= start and a.received <= end]
            assert len(inside) >= 100, (start, end, len(inside))
            canary = inside.count("2")
            if share in (0.0, 1.0):
                assert canary == share * len(inside), (share, canary, len(inside))
            elif share is not None:
                sigma = math.sqrt(len(inside) * share * (1 - share))
                assert abs(canary - share * len(inside)) <= 5 * sigma, (share, canary, len(inside))

        # Version 2 was loaded once and kept through every weight change: its statistics count
        # exactly the requests it answered. Version 1 is gone.
        assert model_stats(srv.stub, "canary", "2").inference_stats.success.count == sum(
            a.version == "2" for a in answers
        )
        assert not srv.stub.ModelReady(pb.ModelReadyRequest(name="canary", version="1")).ready
        rows = srv.stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
        assert [(r.version, r.state) for r in rows if r.name == "canary"] == [("2", "READY")]
