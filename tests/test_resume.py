"""Never lose a run: exact resume after SIGKILL, Ctrl-C, atomic files, the lock, safe loading."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import gpty2_wiki as g
from helpers import ROOT, SCRIPT, TINY, in_process, run

RUN = ["--data-source", "offline", "--num-articles", "200", "--eval-interval", "50", "--checkpoint-interval", "10",
       *TINY]


def start(args, cwd):
    return subprocess.Popen([sys.executable, SCRIPT, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def wait_for_checkpoint(path, proc, min_iter, timeout=90):
    """Poll (bounded) until the checkpoint at path has reached min_iter."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path):
            try:
                if torch.load(path, weights_only=True)["iter"] >= min_iter:
                    return
            except Exception:
                pass  # never happens with atomic writes, but a poll must not die on it
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at iter >= {min_iter} (process returned {proc.poll()})")


def final_weights(d):
    return torch.load(os.path.join(d, "out", "ckpt.pt"), weights_only=True)


def test_kill_and_resume_is_bit_exact(tmp_path, monkeypatch, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    args = RUN + ["--max-iters", "100", "--dropout", "0.1", "--optimizer", "muon"]  # dropout and Muon's state too
    assert in_process(args, a, monkeypatch, capsys)[0] == 0  # the reference, never interrupted
    p = start(args, b)  # a real process, killed for real
    wait_for_checkpoint(b / "out" / "ckpt.pt", p, 20)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL  # it really died mid-run
    killed_at = torch.load(b / "out" / "ckpt.pt", weights_only=True)["iter"]
    assert killed_at < 100
    rc, out, err = in_process(args + ["--resume"], b, monkeypatch, capsys)
    assert rc == 0 and f"resuming from out/ckpt.pt at step {killed_at}" in out, out + err
    ka, kb = final_weights(a), final_weights(b)
    assert ka["iter"] == kb["iter"] == 100 and ka["choice"]["optimizer"] == "muon"
    for name, t in ka["model"].items():
        assert torch.equal(t, kb["model"][name]), name
    assert ka["best_val_loss"] == kb["best_val_loss"]


def questions_at_each_evaluation(samples):
    blocks = samples.split("--- step ")[1:]
    return [[line for line in b.splitlines() if line.startswith("Q: ")] for b in blocks]


def test_resume_refuses_a_changed_shape_and_reports_changed_settings(tmp_path, monkeypatch, capsys):
    assert in_process(RUN + ["--max-iters", "20", "--eval-interval", "10"], tmp_path, monkeypatch, capsys)[0] == 0
    with pytest.raises(g.UserError, match="cannot resume: .*n_layer: 2 -> 3"):
        g.train(g.make_config(g.build_parser().parse_args(RUN + ["--max-iters", "20", "--n-layer", "3",
                                                                 "--out-dir", str(tmp_path / "out")])), resume=True)
    rc, out, _ = in_process(RUN + ["--max-iters", "30", "--eval-interval", "10", "--learning-rate", "1e-3", "--resume"],
                            tmp_path, monkeypatch, capsys)
    assert rc == 0 and "max_iters 20 -> 30" in out and "learning_rate" in out
    assert torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["iter"] == 30
    asked = questions_at_each_evaluation((tmp_path / "out" / "samples.txt").read_text())
    assert len(asked) == 5 and all(q == asked[0] for q in asked)  # steps 0, 10, 20, then 20 and 30 resumed


def test_ctrl_c_saves_and_exits_130(tmp_path):
    p = start(RUN + ["--max-iters", "100000"], tmp_path)
    wait_for_checkpoint(tmp_path / "out" / "ckpt.pt", p, 10)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "--resume" in out and "Traceback" not in err
    ck = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert ck["iter"] >= 10 and set(ck) >= {"model", "optimizer", "rng", "train_config", "split", "vocab"}


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.bin"
    g.atomic_write(str(path), lambda f: f.write(b"old"))

    def half_then_crash(f):
        f.write(b"new but incomp")
        raise RuntimeError("crash mid-write")
    with pytest.raises(RuntimeError):
        g.atomic_write(str(path), half_then_crash)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_a_killed_writer_leaves_the_previous_copy(tmp_path):
    path = tmp_path / "model.pt"
    g.atomic_write(str(path), lambda f: torch.save({"x": torch.ones(3)}, f))
    code = ("import os, sys, gpty2_wiki as g\n"
            "def w(f):\n    f.write(b'partial data'); f.flush(); os.kill(os.getpid(), 9)\n"
            f"g.atomic_write({str(path)!r}, w)\n")
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert r.returncode == -9
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_folder_is_reported_and_the_old_copy_kept(tmp_path):
    path = tmp_path / "m.bin"
    g.atomic_write(str(path), lambda f: f.write(b"old"))
    os.chmod(tmp_path, 0o500)
    try:
        assert g.save_file(str(path), lambda f: f.write(b"new"), "model") is False
    finally:
        os.chmod(tmp_path, 0o700)
    assert path.read_bytes() == b"old"


def test_full_disk_is_reported_and_the_old_copy_kept(tmp_path, capsys):
    path = tmp_path / "m.bin"
    g.atomic_write(str(path), lambda f: f.write(b"old"))

    def disk_full(f):
        raise OSError(28, "No space left on device")
    assert g.save_file(str(path), disk_full, "checkpoint") is False
    assert "No space left on device" in capsys.readouterr().out and path.read_bytes() == b"old"


def test_one_run_per_folder_and_a_dead_holder_frees_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import gpty2_wiki as g, sys, time\n"
                               "lock = g.acquire_lock('out'); print('locked', flush=True); time.sleep(120)"],
                              cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert holder.stdout.readline().strip() == "locked"
    r = run(RUN + ["--max-iters", "5"], cwd=tmp_path)
    assert r.returncode == 1 and "another run" in r.stderr and str(holder.pid) in r.stderr
    holder.kill()
    holder.wait()
    g.acquire_lock(str(tmp_path / "out")).close()  # killed, its lock is gone with it


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_malicious_checkpoint_is_refused_and_its_code_never_runs(tmp_path):
    torch.save({"model": {"w": torch.ones(1)}, "config": {}, "vocab": g.VOCAB, "x": Evil()}, tmp_path / "evil.pt")
    r = run(["--ask", "Who is Ada?", "--model", "evil.pt"], cwd=tmp_path)
    assert r.returncode == 1 and "refusing to load" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists()


def test_broken_and_foreign_files_give_one_line_errors(tmp_path):
    model = g.GPTLanguageModel(g.GPTConfig(block_size=8, n_embd=16, n_head=2, n_layer=1))
    g.save_model(str(tmp_path / "good.pt"), model, 1, 1.0)
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[:len(data) // 2])
    (tmp_path / "text.pt").write_text("hello, not a checkpoint")
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    ck = torch.load(tmp_path / "good.pt", weights_only=True)
    ck["config"]["n_layer"] = 2
    torch.save(ck, tmp_path / "wrong_shape.pt")
    ck["vocab"] = "abc"
    torch.save(ck, tmp_path / "other_vocab.pt")
    expect = {"truncated.pt": "not a readable checkpoint", "text.pt": "not a readable checkpoint",
              "foreign.pt": "not a gpty2_wiki checkpoint", "wrong_shape.pt": "does not fit",
              "other_vocab.pt": "different character vocabulary", "missing.pt": "no checkpoint"}
    for name, needle in expect.items():
        with pytest.raises(g.UserError, match=needle):
            g.load_model(str(tmp_path / name))
    r = run(["--ask", "Who is Ada?", "--model", "truncated.pt"], cwd=tmp_path)  # and in a real process, one line
    assert r.returncode == 1 and expect["truncated.pt"] in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert run(["--ask", "Who is Ada?", "--model", "good.pt"], cwd=tmp_path).returncode == 0
