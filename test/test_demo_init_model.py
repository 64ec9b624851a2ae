"""The untrained demo LENS: built from synthetic data in seconds, saved, and loadable by folder."""
import numpy as np
import pytest

from lens_model import tiny
from lens_model.checkpoints import load_model
from lens_model.predictor import LensPredictor
from training.data.registry import load_dataset
from recipes.demo import init_model
from training.synthetic import main as synthetic_main


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    synthetic_main(["--out", str(root), "--images", "6", "--seed", "3", "--size", "112"])
    return root


def test_init_model_writes_a_loadable_untrained_demo_model(data_root, tmp_path):
    out = tmp_path / "init"
    assert init_model.main(["--data", str(data_root), "--out", str(out), "--hidden", "64", "--layers", "2",
                            "--num-queries", "4", "--vocab-size", "600"]) == 0
    model = load_model(str(out))
    config = model.config
    assert config.name == "lens-synth-demo" and config.random_weights
    assert (config.template, config.query_positions, config.prompt_collapse) == ("reasoning", "mrope", "none")
    assert model.reasoner.config.text_config.hidden_size == 64 and model.context.num_queries == 4
    assert model.sam.image_size == 128
    # The reasoner sees the synthetic images at their own size, so both frames coincide.
    assert model.encode_image(np.zeros((112, 112, 3), np.uint8)).resized_size == (112, 112)
    # The tokenizer was trained on the synthetic corpus: its reasoning takes far fewer tokens than
    # with tiny-random's generic tokenizer.
    reasoning = load_dataset("synthetic", data_root, "train")[0].reasoning
    demo_tokens = len(model.processor.tokenizer(reasoning)["input_ids"])
    assert demo_tokens < 0.6 * len(tiny.build_tokenizer()(reasoning)["input_ids"])
    assert config.instruction == 'Find "{query}".'  # the shipped recipe's short prompt
    assert model.reasoner.config.text_config.rope_parameters["rope_theta"] == 1e6
    result = LensPredictor(model).predict(np.full((112, 112, 3), 200, np.uint8), "the red circle", max_new_tokens=4)
    assert result.mask.shape == (112, 112)


def test_instruction_option_sets_the_prompt_and_joins_the_tokenizer_corpus(data_root, tmp_path):
    """``--instruction`` is saved in the model's config, prompts it, and is in the tokenizer's
    corpus: the short prompt takes under half the paper's tokens."""
    out = tmp_path / "short"
    instruction = 'Find "{query}".'
    assert init_model.main(["--data", str(data_root), "--out", str(out), "--hidden", "64", "--layers", "2",
                            "--num-queries", "4", "--instruction", instruction]) == 0
    model = load_model(str(out))
    assert model.config.instruction == instruction
    assert next(init_model.tokenizer_corpus(load_dataset("synthetic", data_root, "train", per="ref"), instruction)) == instruction

    def prompt_tokens(text: str) -> int:
        rendered = model.processor.render("the red circle", "reasoning", model.config.system_prompt, text)
        return len(model.processor.tokenizer(rendered)["input_ids"])

    assert prompt_tokens(instruction) < 0.5 * prompt_tokens("")


def test_patch_and_merge_sizes_set_the_number_of_image_tokens(data_root, tmp_path):
    """28 px patches merged 4 x 4: the whole 112 px image is one language token (the vision merger
    concatenates the 16 patches in a fixed order, so positions are in the token's content)."""
    out = tmp_path / "single"
    assert init_model.main(["--data", str(data_root), "--out", str(out), "--hidden", "64", "--layers", "2",
                            "--num-queries", "4", "--patch-size", "28", "--merge-size", "4"]) == 0
    model = load_model(str(out))
    encoded = model.encode_image(np.zeros((112, 112, 3), np.uint8))
    assert encoded.num_tokens == 1 and model.vision_embeds(encoded).shape == (1, 64)
    result = LensPredictor(model).predict(np.full((112, 112, 3), 200, np.uint8), "the red circle", max_new_tokens=4)
    assert result.mask.shape == (112, 112)


def test_language_model_initial_weight_scale_is_an_option(data_root, tmp_path):
    """``--lm-init-std`` scales the language model's initial weights (embeddings included) and leaves
    the vision tower at its own initialisation."""
    stds = {}
    for std in (0.02, 0.125):
        out = tmp_path / str(std)
        assert init_model.main(["--data", str(data_root), "--out", str(out), "--hidden", "64", "--layers", "2",
                                "--num-queries", "4", "--lm-init-std", str(std)]) == 0
        reasoner = load_model(str(out)).reasoner
        language = reasoner.model.language_model
        stds[std] = [float(w.detach().std()) for w in (language.layers[0].self_attn.q_proj.weight, language.embed_tokens.weight,
                                              reasoner.model.visual.blocks[0].attn.qkv.weight)]
    for std in stds:
        assert stds[std][0] == pytest.approx(std, rel=0.05) and stds[std][1] == pytest.approx(std, rel=0.05)
        assert stds[std][2] == pytest.approx(0.02, rel=0.05)


def test_architecture_rejects_sizes_the_pipeline_cannot_use():
    with pytest.raises(ValueError, match="multiple of patch_size x merge_size = 28"):
        init_model.DemoArchitecture(image_size=100)
    with pytest.raises(ValueError, match="= 112"):
        init_model.DemoArchitecture(image_size=84, patch_size=28, merge_size=4)
    with pytest.raises(ValueError, match="multiple of 32"):
        init_model.DemoArchitecture(sam_image_size=100)
    with pytest.raises(ValueError, match="lm_init_std must be positive"):
        init_model.DemoArchitecture(lm_init_std=0.0)


def test_sam2_weights_come_from_their_own_seed(data_root):
    """SAM 2's initial weights depend on ``sam_seed`` alone (not on the reasoner's seed, size or
    tokenizer), and changing ``sam_seed`` leaves the reasoner and the context module as they were."""
    dataset = load_dataset("synthetic", data_root, "train", per="ref")
    arch = init_model.DemoArchitecture(hidden=64, layers=2, num_queries=4)

    def weights(seed: int, sam_seed: int, prefix: str) -> dict:
        state = init_model.build_demo_model(dataset, arch, seed, sam_seed).state_dict()
        return {k: v for k, v in state.items() if k.startswith(prefix)}

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)

    assert same(weights(0, 5, "sam."), weights(1, 5, "sam."))
    assert not same(weights(0, 5, "sam."), weights(0, 6, "sam."))
    for prefix in ("reasoner.", "context."):
        assert same(weights(0, 5, prefix), weights(0, 6, prefix))
        assert not same(weights(0, 5, prefix), weights(1, 5, prefix))
