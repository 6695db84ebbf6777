"""The shell scripts that run jaxdistill elsewhere: ``scripts/offline_job.sh`` (a machine without network
access) and ``scripts/python.sh`` (which Python the scripts use)."""
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _wheel(path: str) -> None:
  """A minimal pure-Python wheel of a package ``offline_probe`` (what pip installs offline)."""
  info = "offline_probe-1.0.dist-info"
  files = {"offline_probe/__init__.py": "VALUE = 42\n",
           f"{info}/METADATA": "Metadata-Version: 2.1\nName: offline-probe\nVersion: 1.0\n",
           f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
  files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
  with zipfile.ZipFile(path, "w") as z:
    for name, text in files.items():
      z.writestr(name, text)


def _checkout(tmp_path) -> str:
  """A checkout with the two scripts, a recorded result, and one wheel in .offline/."""
  root = tmp_path / "checkout"
  (root / "scripts").mkdir(parents=True)
  for name in ("offline_job.sh", "python.sh"):
    shutil.copy(os.path.join(ROOT, "scripts", name), root / "scripts" / name)
  (root / "experiments" / "results").mkdir(parents=True)
  (root / "experiments" / "results" / "recorded.md").write_text("recorded before the job\n")
  (root / ".offline" / "wheels").mkdir(parents=True)
  _wheel(str(root / ".offline" / "wheels" / "offline_probe-1.0-py3-none-any.whl"))
  return str(root)


def _job(root: str, out: str, seconds: int, *command) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAXDISTILL_PYTHON")}
  env["JAXDISTILL_PYTHON"] = sys.executable
  return subprocess.run(["bash", os.path.join(root, "scripts", "offline_job.sh"), out, str(seconds)]
                        + list(command), env=env, capture_output=True, text=True, timeout=300)


WRITE = """
import os, offline_probe
os.makedirs('runs/r', exist_ok=True)
if os.path.exists('runs/r/step'):
  print('resumed', 'at', open('runs/r/step').read())
open('runs/r/step', 'w').write('7')
open('experiments/results/new.md', 'w').write(str(offline_probe.VALUE))
"""


def test_offline_job_installs_wheels_packs_what_the_command_wrote_and_resumes(tmp_path, monkeypatch):
  root = _checkout(tmp_path)
  out = str(tmp_path / "out")
  done = _job(root, out, 120, sys.executable, "-c", WRITE)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  log = open(os.path.join(out, "log.txt")).read()
  assert "offline_job: jax " in log and "exit status 0" in log and "resumed at" not in log
  with tarfile.open(os.path.join(out, "results.tar.gz")) as t:
    assert t.getnames() == ["experiments/results/new.md"]  # the recorded file is left out
    assert t.extractfile("experiments/results/new.md").read() == b"42"
  with tarfile.open(os.path.join(out, "runs.tar.gz")) as t:
    assert "runs/r/step" in t.getnames()
  env_out = str(tmp_path / "out_excluded")
  os.makedirs(os.path.join(root, "runs", "experts"))
  open(os.path.join(root, "runs", "experts", "big"), "w").write("x")
  with monkeypatch.context() as m:
    m.setenv("RUNS_EXCLUDE", "*/experts")
    assert _job(root, env_out, 60, "true").returncode == 0
  with tarfile.open(os.path.join(env_out, "runs.tar.gz")) as t:
    assert "runs/r/step" in t.getnames() and not any("experts" in n for n in t.getnames())
  # The next job, in a fresh checkout with the runs archive as .offline/resume.tar.gz, starts from it.
  again = _checkout(tmp_path / "second")
  shutil.copy(os.path.join(out, "runs.tar.gz"), os.path.join(again, ".offline", "resume.tar.gz"))
  done = _job(again, str(tmp_path / "out2"), 120, sys.executable, "-c", WRITE)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert "resumed at 7" in open(str(tmp_path / "out2" / "log.txt")).read()


def test_offline_job_stops_a_command_at_its_limit_and_refuses_bad_arguments(tmp_path):
  root = _checkout(tmp_path)
  done = _job(root, str(tmp_path / "out"), 1, "sleep", "30")
  assert done.returncode == 124
  assert "exit status 124" in open(str(tmp_path / "out" / "log.txt")).read()
  bad = _job(root, str(tmp_path / "out"), "ten", "true")
  assert bad.returncode == 2 and "SECONDS must be a whole number, got 'ten'" in bad.stderr
  (tmp_path / "broken").mkdir()
  broken = tmp_path / "broken" / "x.whl"
  broken.write_text("not a wheel")
  os.remove(os.path.join(root, ".offline", "wheels", "offline_probe-1.0-py3-none-any.whl"))
  shutil.copy(broken, os.path.join(root, ".offline", "wheels", "broken-1.0-py3-none-any.whl"))
  failed = _job(root, str(tmp_path / "out3"), 10, "true")
  assert failed.returncode == 1 and "the wheels did not install" in failed.stdout + failed.stderr


def test_python_sh_uses_the_named_python_without_making_a_venv(tmp_path):
  script = "cd %s && source scripts/python.sh && echo \"PY=$PY\"" % ROOT
  env = {**os.environ, "JAXDISTILL_PYTHON": "/some/python"}
  done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
  assert done.returncode == 0 and done.stdout.strip() == "PY=/some/python"
