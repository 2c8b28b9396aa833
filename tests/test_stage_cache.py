"""The stage cache reads back only Sentio's own JSON records: a planted pickle never runs."""

from __future__ import annotations

import os

import pytest

from tasks.common import RecordSerializer, StageOutput, quarantine_untrusted, storage_root


class _Payload:
    """Pickles to a call of os.system: what an attacker would plant in the cache."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_pickle(path, marker) -> None:
    """A Prefect result record naming the cloudpickle serializer, with a payload that runs a command."""
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    record = ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer(picklelib="cloudpickle"),
                                                        storage_key=str(path)), result=_Payload(str(marker)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(record.serialize())


def test_records_round_trip_through_the_record_serializer():
    from tasks.features import FeaturesOutput

    record = FeaturesOutput(stage="features", path="p", sha256="s", columns=("QQQ_ret_1",), n_features=98, rows=2590, warmup_rows=60)
    assert RecordSerializer().loads(RecordSerializer().dumps(record)) == record
    with pytest.raises(TypeError, match="only stage records"):
        RecordSerializer().dumps({"a": 1})
    with pytest.raises(ValueError, match="not a Sentio stage record"):
        RecordSerializer().loads(b'{"record": "os.system", "data": {}}')
    assert "FeaturesOutput" in StageOutput.registry


def test_a_planted_pickle_is_quarantined_before_prefect_reads_it(tmp_path, caplog):
    """The stage's cache key function looks at the stored result first: a file that is not a
    Sentio record is moved aside, so Prefect's lookup misses and the stage runs again."""
    from sentio_core.config import load_config
    from tasks.features import KEY

    from .conftest import SMOKE

    cfg = load_config(SMOKE, [f"run.work_dir={tmp_path / 'work'}"])
    key = KEY.compute(cfg, "panel-sha")
    marker = tmp_path / "ran"
    plant_pickle(storage_root() / key, marker)
    assert KEY.checked(cfg, key) == key
    assert not (storage_root() / key).exists()  # Prefect's lookup finds nothing to read
    moved = list(storage_root().glob(f"{key}.untrusted-*"))
    assert len(moved) == 1 and key in caplog.text and "not a Sentio stage record" in caplog.text
    moved[0].unlink()
    assert not marker.exists(), "the planted payload ran"
    assert quarantine_untrusted(storage_root() / key) is False  # nothing there: nothing to do


def test_the_unprotected_default_would_have_run_it(tmp_path):
    """The control: Prefect's default local storage deserialises the same file with cloudpickle."""
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    key = "features-planted-control"
    marker = tmp_path / "ran"
    plant_pickle(storage_root() / key, marker)
    try:
        ResultStore(result_storage=LocalFileSystem(basepath=str(storage_root()))).read(key)
    except Exception:
        pass
    finally:
        (storage_root() / key).unlink()
    assert marker.exists()


def test_a_record_that_names_two_serializers_is_quarantined(tmp_path):
    """Prefect honours a legacy top-level "serializer" over the metadata's: a file claiming to be a
    Sentio record in its metadata but pickle at the top level is not one."""
    import json

    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    key = "features-two-serializers"
    marker = tmp_path / "ran"
    blob = json.loads(ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer(picklelib="cloudpickle"),
                                                                 storage_key=key),
                                   result=_Payload(str(marker))).serialize())
    blob["serializer"] = blob["metadata"]["serializer"]
    blob["metadata"]["serializer"] = {"type": "sentio-record"}
    path = storage_root() / key
    path.write_text(json.dumps(blob))
    assert quarantine_untrusted(path) is True and not path.exists()
    for moved in storage_root().glob(f"{key}.untrusted-*"):
        moved.unlink()
    assert not marker.exists()
