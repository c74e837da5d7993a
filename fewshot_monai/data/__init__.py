from fewshot_monai.data.datasets import (  # noqa: F401  (dataset descriptors and datalists)
    CHAOS_T2SPIR,
    PHANTOM,
    PHANTOM_CT,
    SABS_CT,
    DatasetDescriptor,
    datalist,
    generic_datalist,
    get_descriptor,
    nnunet_datalist,
    nnunet_label_map,
)
from fewshot_monai.data.io import (  # noqa: F401  (volume I/O)
    LoadVolume,
    LoadVolumed,
    case_id_from_path,
    case_loading_transforms,
    find_input_error,
    load_case,
    load_volume,
    save_volume,
)
from fewshot_monai.data.phantoms import (  # noqa: F401  (synthetic phantoms)
    PHANTOM_LABELS,
    Phantom,
    make_phantom,
    make_phantom_dataset,
    write_phantom,
)
