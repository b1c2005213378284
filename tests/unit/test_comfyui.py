"""The ComfyUI workflow launch/export.py writes beside the single file (zsnr.comfyui).

NODES is what ComfyUI declares for the nodes the workflow uses, transcribed from its INPUT_TYPES (nodes.py:
CheckpointLoaderSimple, CLIPTextEncode, EmptyLatentImage, KSampler, VAEDecode, SaveImage;
comfy_extras/nodes_model_advanced.py: ModelSamplingDiscrete, RescaleCFG) and RETURN_TYPES. Every required
input must be given, with a value of the declared kind or a link to an output of the declared type.
"""

import json

import pytest

from zsnr.comfyui import comfyui_workflow, write_comfyui_workflow
from zsnr.models.schedule import Schedule

# class_type: ({input: declared type, or the list of allowed values}, RETURN_TYPES)
NODES = {
    "CheckpointLoaderSimple": ({"ckpt_name": "FILENAME"}, ("MODEL", "CLIP", "VAE")),
    "ModelSamplingDiscrete": (
        {"model": "MODEL", "sampling": ["eps", "v_prediction", "lcm", "x0"], "zsnr": "BOOLEAN"},
        ("MODEL",),
    ),
    "RescaleCFG": ({"model": "MODEL", "multiplier": "FLOAT"}, ("MODEL",)),
    "CLIPTextEncode": ({"text": "STRING", "clip": "CLIP"}, ("CONDITIONING",)),
    "EmptyLatentImage": ({"width": "INT", "height": "INT", "batch_size": "INT"}, ("LATENT",)),
    "KSampler": (
        {
            "model": "MODEL",
            "seed": "INT",
            "steps": "INT",
            "cfg": "FLOAT",
            "sampler_name": "SAMPLER",
            "scheduler": ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal"],
            "positive": "CONDITIONING",
            "negative": "CONDITIONING",
            "latent_image": "LATENT",
            "denoise": "FLOAT",
        },
        ("LATENT",),
    ),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": "STRING"}, ()),
}
VALUE = {"FILENAME": str, "STRING": str, "BOOLEAN": bool, "INT": int, "FLOAT": (int, float), "SAMPLER": str}
START_AT_SIGMA_MAX = {
    "simple",
    "sgm_uniform",
}  # comfy/samplers.py: simple_scheduler, normal_scheduler(sgm=True)


def check_workflow(graph: dict) -> None:
    for node_id, node in graph.items():
        declared, _ = NODES[node["class_type"]]
        assert set(node["inputs"]) == set(declared), (node_id, node["class_type"])
        for name, value in node["inputs"].items():
            kind = declared[name]
            if isinstance(kind, list):
                assert value in kind, (node_id, name, value)
            elif kind in VALUE:
                assert isinstance(value, VALUE[kind]) and not (kind != "BOOLEAN" and isinstance(value, bool))
            else:  # a link [source id, output index] to an output of that type
                source, index = value
                assert NODES[graph[source]["class_type"]][1][index] == kind, (node_id, name, value)


def _graph(**kw):
    return comfyui_workflow(
        "zsnr-sd21.safetensors",
        **({"prediction_type": "v_prediction", "zero_terminal_snr": True, "guidance_rescale": 0.7} | kw),
        resolution=768,
    )


def test_the_workflow_uses_comfyuis_nodes_and_inputs_with_the_four_settings():
    graph = _graph()
    check_workflow(graph)
    by_type = {node["class_type"]: node["inputs"] for node in graph.values()}
    assert (
        by_type["ModelSamplingDiscrete"]["sampling"] == "v_prediction"
        and by_type["ModelSamplingDiscrete"]["zsnr"]
    )
    assert by_type["RescaleCFG"]["multiplier"] == 0.7
    assert by_type["KSampler"]["scheduler"] in START_AT_SIGMA_MAX and by_type["KSampler"]["cfg"] == 7.5
    assert by_type["EmptyLatentImage"]["width"] == by_type["EmptyLatentImage"]["height"] == 768
    # the sampler's model is the loader's, patched by ModelSamplingDiscrete and then RescaleCFG
    model = by_type["KSampler"]["model"]
    chain = []
    while model is not None:
        node = graph[model[0]]
        chain.append(node["class_type"])
        model = node["inputs"].get("model")
    assert chain == ["RescaleCFG", "ModelSamplingDiscrete", "CheckpointLoaderSimple"]


def test_an_epsilon_model_keeps_its_own_settings():
    graph = _graph(prediction_type="epsilon", zero_terminal_snr=False, guidance_rescale=0.0)
    check_workflow(graph)
    by_type = {node["class_type"]: node["inputs"] for node in graph.values()}
    assert by_type["ModelSamplingDiscrete"] | {"model": None} == {
        "model": None,
        "sampling": "eps",
        "zsnr": False,
    }
    with pytest.raises(ValueError, match="ModelSamplingDiscrete takes"):
        _graph(prediction_type="flow")


def test_written_beside_the_single_file(tmp_path):
    path = write_comfyui_workflow(Schedule(), tmp_path / "zsnr-sd21.safetensors", resolution=512)
    assert path == tmp_path / "zsnr-sd21.comfyui.json"
    graph = json.loads(path.read_text())
    check_workflow(graph)
    assert graph["1"]["inputs"]["ckpt_name"] == "zsnr-sd21.safetensors"
