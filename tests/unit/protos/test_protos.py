"""The committed gRPC stubs are what scripts/gen_protos makes from protos/*.proto."""
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GEN = ROOT / "scripts" / "gen_protos"


def check(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(GEN), "--check", "--dir", str(folder)], capture_output=True,
                          text=True, timeout=120)


def test_generated_stubs_are_up_to_date():
    result = check(ROOT / "protos")
    assert result.returncode == 0, result.stderr


def test_a_changed_proto_makes_the_check_fail(tmp_path):
    copy = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", copy, ignore=shutil.ignore_patterns("__pycache__"))
    proto = copy / "coinfer.proto"
    proto.write_text(proto.read_text().replace("uint32 batch_size = 4;", "uint32 batch_size = 4;\n  bool extra = 9;"))
    result = check(copy)
    assert result.returncode == 1 and "coinfer_pb2.py" in result.stderr


def test_stubs_import_through_the_namespace_only():
    text = (ROOT / "protos" / "coinfer_pb2_grpc.py").read_text()
    assert "from coinfer.protos import coinfer_pb2" in text
    assert "\nimport coinfer_pb2" not in text
