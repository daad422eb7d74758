"""bench/gpu_check.sh exercised on the CPU, so that the GPU run (a rare, short loan of a machine)
cannot die of a mistake in it: the dry run end to end, the GPU mode's early stops, and the probe's
pieces that only a GPU machine would otherwise reach."""
import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_probe  # noqa: E402

SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")
STEPS = ["machine", "requirements", "venv", "probe", "tests", "throughput"]


def run_check(args, env=None, timeout=330):
    full_env = {k: v for k, v in os.environ.items() if k not in ("OUT", "RECOGNITION_GPU_TESTS_ON_CPU")}
    full_env.update(OMP_NUM_THREADS="1", GPU_CHECK_PYTHON=sys.executable)
    for key, value in (env or {}).items():  # None: not set at all
        full_env.pop(key, None)
        if value is not None:
            full_env[key] = value
    return subprocess.run(["bash", SCRIPT] + args, cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_runs_every_step_on_the_cpu_and_reports_them(tmp_path):
    out = tmp_path / "out"
    proc = run_check(["--dry-run", str(out)])
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert proc.returncode == 0, (proc.stdout[-3000:], json.dumps(report["steps"], indent=1)[-3000:])
    assert "all 5 steps ok (1 skipped: venv)" in proc.stdout.strip().splitlines()[-1]
    assert [s["name"] for s in report["steps"]] == STEPS
    assert report["mode"] == "dry-run" and report["ok"] is True and report["failed_steps"] == []
    assert all(s["status"] == "ok" for n, s in steps.items() if n != "venv")
    assert steps["venv"]["status"] == "skipped" and "no venv" in steps["venv"]["message"]
    assert all(isinstance(s["seconds"], float) and s["limit_s"] > 0 for s in report["steps"])

    # the requirements rewrite the GPU run installs from: one line changed, the rest as pinned
    rewrite = report["requirements"]
    assert rewrite["changed"]["from"] == "mxnet==1.9.1" and rewrite["changed"]["to"] == "mxnet-cu112==1.9.1"
    assert "mxnet-cu112==1.9.1" in rewrite["requirements"] and "mxnet==1.9.1" not in rewrite["requirements"]
    assert "numpy==1.23.5" in rewrite["requirements"]
    assert set(gpu_probe.CUDA_LIBRARY_PINS) <= set(rewrite["requirements"])
    assert "-r " in report["venv"]["would_run"] and "onnxruntime==1.15.1" in report["venv"]["would_run"]

    probe = report["probe"]
    assert probe["mxnet"] == "1.9.1" and probe["num_gpus"] == 0 and probe["ok"] is True
    assert probe["stages"]["first_convolution_float32"]["ok"]
    assert probe["stages"]["float16_rewrite_types"]["value"]["internal_output_types"]["float16"] > 0
    assert "kernels_jit_compiled" in probe and "cuda_runtime" in probe  # the GPU report's fields
    if not probe["float16_convolution"]:  # MXNet's CPU has no float16 GEMM: said, not timed
        assert "FP16 gemm on cpu" in probe["stages"]["convolution_float16"]["value"]["error"]
        assert "float16 not timed" in steps["throughput"]["message"]

    tests = report["tests"]
    assert tests["counts"]["failed"] == 0 and tests["counts"]["error"] == 0 and tests["counts"]["passed"] >= 3
    names = {t["name"] for t in tests["tests"]}
    assert {"test_float32_step_on_the_gpu_equals_the_cpu", "test_trainer_trains_float16_on_one_gpu",
            "test_exported_model_embeds_and_verifies_alike_on_gpu_and_cpu"} <= names
    measured = {t["name"]: t.get("measured") for t in tests["tests"]}
    assert measured["test_float32_step_on_the_gpu_equals_the_cpu"]["parameters_compared"] > 100

    rows = report["throughput"]["rows"]
    assert rows and {(r["model"], r["precision"]) for r in rows} >= {("mobilefacenet", "float32")}
    assert all(r["samples_per_s"] > 0 for r in rows)
    raw = json.loads((out / "throughput.json").read_text())
    assert raw["ctx"] == "cpu" and raw["batch_size"] == 4 and raw["classes"] == 100
    assert (out / "gpu_check.log").stat().st_size > 0 and (out / "gpu_tests.xml").exists()


def fake_nvidia_smi(folder):
    """An nvidia-smi that reports one GPU, for the GPU mode's steps on this machine."""
    path = folder / "nvidia-smi"
    path.write_text('#!/bin/sh\ncase "$1" in --query-gpu=*) echo "NVIDIA Fake, 580.0, 1000 MiB, 9.0, 0:0:0.0";;\n'
                    '*) echo "| NVIDIA-SMI 580.0   Driver Version: 580.0   CUDA Version: 13.0 |";; esac\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(folder)


def test_gpu_mode_without_a_gpu_stops_at_the_first_step(tmp_path):
    env = {"PATH": "/usr/bin:/bin"}  # no nvidia-smi
    proc = run_check(["--out", str(tmp_path), "--python", sys.executable], env=env, timeout=120)
    assert proc.returncode == 1
    assert "FAILED at step machine: " in proc.stdout and "no NVIDIA GPU" in proc.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["ok"] is False and report["first_failure"].startswith("machine: ")
    assert [(s["name"], s["status"]) for s in report["steps"]] == \
        [("machine", "failed")] + [(name, "skipped") for name in STEPS[1:]]


def test_gpu_mode_reports_a_failed_install_in_one_line(tmp_path):
    # a machine with a GPU and an empty folder of wheels: the venv is made, the first pip install
    # finds nothing, and the check stops there saying so (nothing is downloaded)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = {"PATH": fake_nvidia_smi(bindir) + os.pathsep + os.environ["PATH"], "PIP_FIND_LINKS": None,
           "PIP_EXTRA_INDEX_URL": None, "PIP_INDEX_URL": None, "PIP_CONFIG_FILE": os.devnull}
    proc = run_check(["--out", str(tmp_path / "out"), "--python", sys.executable, "--wheels", str(wheels),
                      "--venv", str(tmp_path / "venv")], env=env, timeout=240)
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert proc.returncode == 1, proc.stdout
    assert steps["machine"]["status"] == "ok" and "NVIDIA Fake" in steps["machine"]["message"]
    assert report["machine"]["gpus"][0]["compute_cap"] == "9.0"
    assert steps["requirements"]["status"] == "ok"
    assert steps["venv"]["status"] == "failed" and "pip failed" in steps["venv"]["message"]
    assert "--no-index --find-links" in steps["venv"]["message"]
    assert [steps[n]["status"] for n in STEPS[3:]] == ["skipped"] * 3
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu_check: FAILED at step venv: ")
    assert report["settings"]["MXNET_CUDNN_AUTOTUNE_DEFAULT"] == "0"


def test_kernels_verdict_for_a_chip_newer_than_the_build():
    arches = {"sm": [50, 60, 70, 75, 80, 86], "ptx": [86]}
    assert gpu_probe.kernels_verdict(80, arches)[0] is False
    assert gpu_probe.kernels_verdict(89, arches) == (False, "libmxnet.so's sm_86 machine code runs on compute 8.9")
    assert gpu_probe.kernels_verdict(90, {"sm": arches["sm"], "ptx": []})[0] == "impossible"  # mxnet-cu112 1.9.1
    jit, why = gpu_probe.kernels_verdict(90, arches)
    assert jit is True and "compute_86 PTX" in why
    assert gpu_probe.kernels_verdict(90, {"sm": [70, 80], "ptx": []})[0] == "impossible"
    assert gpu_probe.kernels_verdict(None, arches)[0] is None
    assert gpu_probe.kernels_verdict(90, {"tool": None, "note": "cuobjdump not found"}) == \
        (None, "unknown (cuobjdump not found)")


def test_requirements_rewrite_refuses_what_it_cannot_rewrite(tmp_path):
    source = tmp_path / "requirements.txt"
    source.write_text("numpy==1.23.5\nmxnet==1.9.1  # the CPU build\npytest\n")
    result = gpu_probe.rewrite_requirements(str(source), str(tmp_path / "gpu.txt"))
    lines = (tmp_path / "gpu.txt").read_text().splitlines()
    assert lines[:3] == ["numpy==1.23.5", "mxnet-cu112==1.9.1", "pytest"]
    assert lines[4:] == list(gpu_probe.CUDA_LIBRARY_PINS) and lines[3].startswith("#")
    assert "nvidia-cudnn-cu11==8.9.6.50" in result["requirements"]  # libcudnn.so.8, which libmxnet.so needs
    assert result["changed"] == {"line": 2, "from": "mxnet==1.9.1", "to": "mxnet-cu112==1.9.1"}
    for text, message in (("numpy\n", "exactly one"), ("mxnet==1.9.1\nMXNet>=1.8\n", "exactly one"),
                          ("mxnet>=1.9\n", "not pinned")):
        source.write_text(text)
        with pytest.raises(SystemExit, match=message):
            gpu_probe.rewrite_requirements(str(source), str(tmp_path / "gpu.txt"))


def _elf_with_fatbin(path, entries):
    """A minimal 64-bit ELF file whose .nv_fatbin section holds one fatbin of (kind, arch) entries
    (kind 1: PTX, 2: machine code), laid out as nvcc writes them."""
    import struct
    body = b""
    for kind, arch in entries:
        # kind, version, header size, padded payload size, 16 bytes, the arch at byte 28
        header = struct.pack("<HHII", kind, 0x101, 64, 16) + b"\0" * 16 + struct.pack("<I", arch)
        body += header.ljust(64, b"\0") + b"\0" * 16
    fatbin = struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body
    names = b"\0.nv_fatbin\0.shstrtab\0"
    data_offset = 64
    names_offset = data_offset + 8 + len(fatbin)  # 8 bytes of padding before the fatbin
    shoff = (names_offset + len(names) + 7) // 8 * 8

    def section(name, offset, size):
        return struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, offset, size, 0, 0, 8, 0)
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9 + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0,
                                                                         64, 0, 0, 64, 3, 2)
    blob = header + b"\0" * 8 + fatbin + names
    blob = blob.ljust(shoff, b"\0") + section(0, 0, 0) + section(1, data_offset, 8 + len(fatbin)) + \
        section(12, names_offset, len(names))
    path.write_bytes(blob)
    return str(path)


def test_fatbin_arches_reads_machine_code_and_ptx(tmp_path):
    library = _elf_with_fatbin(tmp_path / "lib.so", [(2, 50), (2, 80), (2, 86), (1, 86)])
    result = gpu_probe.fatbin_arches(library)
    assert (result["sm"], result["ptx"], result["fatbins"]) == ([50, 80, 86], [86], 1)
    assert gpu_probe.kernels_verdict(90, result)[0] is True  # compute_86 PTX, JIT-compiled for sm_90
    import mxnet
    cpu = gpu_probe.fatbin_arches(os.path.join(os.path.dirname(mxnet.__file__), "libmxnet.so"))
    assert cpu["sm"] == [] and cpu["fatbins"] == 0  # the CPU package: no GPU code
