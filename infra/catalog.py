"""Facts about Azure that the configuration is checked against: VM sizes, regions, roles.

These are data, not project identity: the project's choices (which size, which region) live in
``Pulumi.yaml`` and the stack files. A fork that needs another size adds a row here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VmSize:
    """A VM size that Azure ML compute clusters (AmlCompute) offer."""

    name: str
    vcpus: int
    gpus: int
    note: str


# Current GPU sizes for training clusters, cheapest first. The article's STANDARD_NC6 (NC, K80),
# NCv2 (P100) and NCv3 (V100) families are retired; see RETIRED_VM_SIZES.
GPU_VM_SIZES: dict[str, VmSize] = {
    size.name: size
    for size in (
        VmSize("Standard_NC4as_T4_v3", 4, 1, "1x T4 16 GB: the cheapest current NVIDIA size"),
        VmSize("Standard_NC8as_T4_v3", 8, 1, "1x T4 16 GB"),
        VmSize("Standard_NC16as_T4_v3", 16, 1, "1x T4 16 GB"),
        VmSize("Standard_NC64as_T4_v3", 64, 4, "4x T4 16 GB"),
        VmSize("Standard_NC24ads_A100_v4", 24, 1, "1x A100 80 GB"),
        VmSize("Standard_NC48ads_A100_v4", 48, 2, "2x A100 80 GB"),
        VmSize("Standard_NC96ads_A100_v4", 96, 4, "4x A100 80 GB"),
        VmSize("Standard_NC40ads_H100_v5", 40, 1, "1x H100 NVL 94 GB"),
        VmSize("Standard_NC80adis_H100_v5", 80, 2, "2x H100 NVL 94 GB"),
        VmSize("Standard_ND96asr_v4", 96, 8, "8x A100 40 GB, InfiniBand"),
        VmSize("Standard_ND96amsr_A100_v4", 96, 8, "8x A100 80 GB, InfiniBand"),
        VmSize("Standard_ND96isr_H100_v5", 96, 8, "8x H100 80 GB, InfiniBand"),
    )
}

# Small CPU sizes for the optional image-build / CPU-job cluster.
CPU_VM_SIZES: dict[str, VmSize] = {
    size.name: size
    for size in (
        VmSize("Standard_DS2_v2", 2, 0, "2 vCPU, 7 GiB"),
        VmSize("Standard_DS3_v2", 4, 0, "4 vCPU, 14 GiB"),
        VmSize("Standard_DS4_v2", 8, 0, "8 vCPU, 28 GiB"),
        VmSize("Standard_D4s_v3", 4, 0, "4 vCPU, 16 GiB"),
        VmSize("Standard_D8s_v3", 8, 0, "8 vCPU, 32 GiB"),
        VmSize("Standard_E4s_v3", 4, 0, "4 vCPU, 32 GiB"),
        VmSize("Standard_F4s_v2", 4, 0, "4 vCPU, 8 GiB"),
    )
}

# Sizes that Azure has retired (no new deployments): a clear message beats a failed `pulumi up`.
RETIRED_VM_SIZES: dict[str, str] = {
    **{
        name: "NC-series (K80) was retired on 2023-09-06"
        for name in ("Standard_NC6", "Standard_NC12", "Standard_NC24", "Standard_NC24r")
    },
    **{
        name: "NCv2-series (P100) was retired on 2023-09-06"
        for name in (
            "Standard_NC6s_v2",
            "Standard_NC12s_v2",
            "Standard_NC24s_v2",
            "Standard_NC24rs_v2",
        )
    },
    **{
        name: "NCv3-series (V100) was retired on 2025-09-30"
        for name in (
            "Standard_NC6s_v3",
            "Standard_NC12s_v3",
            "Standard_NC24s_v3",
            "Standard_NC24rs_v3",
        )
    },
    **{
        name: "ND-series (P40) was retired on 2023-09-06"
        for name in ("Standard_ND6s", "Standard_ND12s", "Standard_ND24s", "Standard_ND24rs")
    },
    **{
        name: "NV-series (M60) was retired on 2023-09-06"
        for name in ("Standard_NV6", "Standard_NV12", "Standard_NV24")
    },
}

# Public Azure regions that offer Azure Machine Learning (names as ARM spells them).
AZURE_ML_REGIONS: tuple[str, ...] = (
    "australiacentral",
    "australiaeast",
    "australiasoutheast",
    "brazilsouth",
    "canadacentral",
    "canadaeast",
    "centralindia",
    "centralus",
    "eastasia",
    "eastus",
    "eastus2",
    "francecentral",
    "germanywestcentral",
    "israelcentral",
    "italynorth",
    "japaneast",
    "japanwest",
    "koreacentral",
    "koreasouth",
    "mexicocentral",
    "northcentralus",
    "northeurope",
    "norwayeast",
    "polandcentral",
    "qatarcentral",
    "southafricanorth",
    "southcentralus",
    "southeastasia",
    "southindia",
    "spaincentral",
    "swedencentral",
    "switzerlandnorth",
    "uaenorth",
    "uksouth",
    "ukwest",
    "westcentralus",
    "westeurope",
    "westus",
    "westus2",
    "westus3",
)

# Built-in Azure role definition IDs (the same GUID in every tenant).
ROLE_AZUREML_DATA_SCIENTIST = "f6c7c914-8db3-469d-8ca1-694a8f32e121"
ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
ROLE_ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
