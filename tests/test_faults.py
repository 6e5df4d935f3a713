"""Faults in the running app: damaged or missing weights, and running out of memory.

A damaged engine says which file is wrong and the other engines keep working;
after an out-of-memory error the registry frees what it can and the next run works.
"""
import shutil

import pytest
import torch

from tests.conftest import ROOT, free_port


def vqgan_clip_args(seed=0):
    return ["shapes", "a red circle", seed, 32, 32, 2, 1, None, "", None, 0, "", "", 0.1, "Adam", 2, 1.0, "latest",
            ["Af"], 0, "auto", 10]


def dalle_args(seed=0):
    return ["shapes", "a red circle", 1, 1.0, 1024, 1.0, 1.0, seed, False, None, 4, 4]


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """An app whose DALL-E weights are truncated, and a copy of the weights folder it reads."""
    from gradio_client import Client

    from pipelines.registry import Registry
    from ui.app import build_demo

    weights = tmp_path_factory.mktemp("w") / "weights"
    shutil.copytree(ROOT / "presets" / "weights", weights)
    f = weights / "shapes-dalle" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    registry = Registry(device="cpu", weights_dir=weights)
    demo = build_demo(registry)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                show_error=True)
    try:
        yield Client(demo.local_url, verbose=False, download_files=str(tmp_path_factory.mktemp("dl"))), registry, weights
    finally:
        demo.close()


def test_truncated_weights_name_the_file_and_other_engines_work(damaged):
    from gradio_client.exceptions import AppError

    client, registry, weights = damaged
    with pytest.raises(AppError) as e:
        client.predict(*dalle_args(), api_name="/dalle")
    assert "shapes-dalle" in str(e.value) and "model.safetensors" in str(e.value), str(e.value)
    assert client.predict(*vqgan_clip_args(), api_name="/vqgan_clip")[1].startswith("**Done**")
    with pytest.raises(AppError):           # still a clear error the second time, never a half-loaded model
        client.predict(*dalle_args(), api_name="/dalle")


def test_missing_weights_name_the_folder(damaged):
    from gradio_client.exceptions import AppError

    client, registry, weights = damaged
    shutil.rmtree(weights / "shapes-dalle")
    with pytest.raises(AppError) as e:
        client.predict(*dalle_args(), api_name="/dalle")
    assert "shapes-dalle" in str(e.value) and "not found" in str(e.value), str(e.value)
    assert client.predict(*vqgan_clip_args(1), api_name="/vqgan_clip")[1].startswith("**Done**")


def test_out_of_memory_is_a_clear_message_and_the_next_run_works(damaged, monkeypatch):
    from gradio_client.exceptions import AppError

    import pipelines.vqgan_clip as engine

    client, registry, _ = damaged
    real = engine.optimise
    calls = []

    def once_out_of_memory(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
        yield from real(*a, **kw)

    monkeypatch.setattr(engine, "optimise", once_out_of_memory)
    with pytest.raises(AppError, match="Out of memory.*smaller"):
        client.predict(*vqgan_clip_args(2), api_name="/vqgan_clip")
    assert client.predict(*vqgan_clip_args(3), api_name="/vqgan_clip")[1].startswith("**Done**")
    assert len(calls) == 2
