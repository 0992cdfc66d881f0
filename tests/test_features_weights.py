"""Initial VGG16 weights without the network: a local HTTP server stands in for
download.pytorch.org, serving a generated state dict (fp16, to halve its 528 MB)."""

import functools
import hashlib
import http.server
import threading
from typing import ClassVar

import pytest
import torch
from torchvision.models import vgg16

from pipeline.config import ConfigError, load_config
from pipeline.devices import resolve_device
from pipeline.features.extract import auto_batch_size, auto_workers
from pipeline.features.vgg import (
    WeightsError,
    build_vgg16,
    initial_weights,
    to_input,
)


class Handler(http.server.SimpleHTTPRequestHandler):
    served: ClassVar[list[str]] = []

    def do_GET(self):
        Handler.served.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in vgg16(num_classes=1000).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen).half() for k, s in shapes.items()}
    torch.save(state, root / "vgg16-test.pth")
    (root / "junk.pth").write_bytes(b"not a checkpoint")
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    sha = hashlib.sha256((root / "vgg16-test.pth").read_bytes()).hexdigest()
    yield {"url": f"http://127.0.0.1:{httpd.server_port}", "root": root, "sha": sha,
           "state": state}
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_imagenet_weights_are_downloaded_once_hash_checked_and_loaded(server, tmp_path):
    url = f"{server['url']}/vgg16-test.pth"
    Handler.served.clear()
    _, info = initial_weights("imagenet", url=url, sha256=server["sha"][:8],
                                  cache_dir=tmp_path)
    assert info.identity == "torchvision:VGG16_Weights.IMAGENET1K_V1"
    assert info.sha256 == server["sha"]
    assert (tmp_path / "vgg16-test.pth").is_file()
    again, _ = initial_weights("imagenet", url=url, sha256=server["sha"], cache_dir=tmp_path)
    assert Handler.served == ["/vgg16-test.pth"]  # the second call used the cache
    model = build_vgg16(5, again, source="test")
    assert torch.equal(model.features[0].weight, server["state"]["features.0.weight"].float())
    assert torch.equal(model.classifier[0].bias, server["state"]["classifier.0.bias"].float())
    assert model.classifier[6].out_features == 5


def test_wrong_hash_is_an_error_and_not_cached(server, tmp_path):
    with pytest.raises(WeightsError, match=r"sha256 .* expected deadbeef"):
        initial_weights("imagenet", url=f"{server['url']}/vgg16-test.pth", sha256="deadbeef",
                        cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_failed_download_is_an_error(server, tmp_path):
    with pytest.raises(WeightsError, match=r"download failed.*404"):
        initial_weights("imagenet", url=f"{server['url']}/missing.pth", sha256="",
                        cache_dir=tmp_path)


def test_local_weights_file(server, tmp_path):
    path = server["root"] / "vgg16-test.pth"
    state, info = initial_weights(str(path), url="", sha256=server["sha"][:12],
                                  cache_dir=tmp_path)
    assert info.identity == "file:vgg16-test.pth" and set(state) == set(server["state"])
    with pytest.raises(WeightsError, match=r"missing\.pth not found"):
        initial_weights(str(tmp_path / "missing.pth"), url="", sha256="", cache_dir=tmp_path)
    with pytest.raises(WeightsError, match=r"does not match finetune\.weights_sha256"):
        initial_weights(str(path), url="", sha256="0123abcd", cache_dir=tmp_path)
    with pytest.raises(WeightsError, match="not a PyTorch state dict"):
        initial_weights(str(server["root"] / "junk.pth"), url="", sha256="",
                        cache_dir=tmp_path)


def test_state_dict_of_another_network_is_an_error():
    with pytest.raises(WeightsError, match="not a torchvision VGG16"):
        build_vgg16(3, {"conv.weight": torch.zeros(1)}, source="x.pth")
    with torch.device("meta"):
        state = vgg16().state_dict()
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    with pytest.raises(WeightsError, match=r"features.0.weight has shape \(64, 1, 3, 3\)"):
        build_vgg16(3, state, source="x.pth")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("finetune.weights_sha256", "xyz", "8 to 64 hexadecimal"),
    ("finetune.weights_url", "ftp://host/f.pth", "http"),
    ("finetune.checkpoint_every", 0, "integer >= 1"),
    ("finetune.precision", "fp16", "auto, bf16 or fp32"),
    ("extract.precision", "int8", "auto, bf16 or fp32"),
])
def test_bad_parameters_are_rejected(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"{key}={value}"])


@pytest.mark.parametrize(("key", "value"), [
    ("extract.workers", -2), ("extract.workers", "many"), ("extract.workers", 1.5),
    ("extract.batch_size", -1), ("extract.batch_size", "auto"),
])
def test_bad_extract_parameters_name_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"{key}: expected (an integer|.*-1 for auto|"
                                          r".*0 for auto)"):
        load_config(None, [f"{key}={value}"])


def test_extract_batch_size_and_workers_follow_the_device():
    cpu = torch.device("cpu")
    assert auto_batch_size(cpu) == 64 and auto_workers(cpu) == 0
    config = load_config(None, ["extract.batch_size=0", "extract.workers=-1"]).extract
    assert (config.batch_size, config.workers) == (0, -1)


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


def test_inputs_are_normalised_and_resized():
    images = torch.full((2, 40, 40, 3), 255, dtype=torch.uint8)
    x = to_input(images, 32, torch.device("cpu"))
    assert x.shape == (2, 3, 32, 32)
    expected = (1 - 0.485) / 0.229
    assert torch.allclose(x[:, 0], torch.full_like(x[:, 0], expected))
