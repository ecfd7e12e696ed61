"""The SD-VAE (AutoencoderKL) in Flax.

- `config`: VAEConfig and the latent scale ``VAE_SCALE = 0.18215`` (its one home in the project).
- `layers`: the linen modules (ResnetBlock2D ... Encoder / Decoder, AutoencoderKLModule).
- `model`: the functional wrapper `AutoencoderKL` (encode / decode) and `load_vae`.
- `weights`: the diffusers key table, diffusers and converted (Orbax) folder readers.

The public API is re-exported here: ``from nag_jax.models import vae; vae.load_vae(dir)``.
"""

from nag_jax.models.vae.config import (
    SUPPORTED_DOWN_BLOCK,
    SUPPORTED_UP_BLOCK,
    VAE_SCALE,
    Dtype,
    VAEConfig,
    vae_scale,
)
from nag_jax.models.vae.layers import (
    Attention,
    AutoencoderKLModule,
    Decoder,
    DecoderBlock,
    Downsample2D,
    Encoder,
    EncoderBlock,
    MidBlock,
    ResnetBlock2D,
    Upsample2D,
)
from nag_jax.models.vae.model import AutoencoderKL, load_vae
from nag_jax.models.vae.weights import (
    HUB_HINT,
    ORBAX_PARAMS_DIR,
    WEIGHT_FILES,
    VAEWeightsError,
    find_vae_dir,
    infer_config_from_state_dict,
    is_orbax_vae_dir,
    load_converted,
    load_diffusers,
    normalize_state_dict,
    params_from_state_dict,
    read_config,
    read_state_dict,
    state_dict_from_params,
    torch_key,
)
