"""The ``local_model_upload`` component: the local stand-in for GCPC's ``ModelUploadOp``.

The work is ``components.stand_ins.upload_model`` (a directory-based registry with Vertex's
rules for versions and aliases); this module declares the KFP component around it.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def local_model_upload(
    display_name: str,
    unmanaged_container_model: Input[Artifact],
    registry_dir: str,
    model: Output[Artifact],
    parent_model: str = "",
    version_aliases: list = [],  # noqa: B006 (KFP needs a literal default)
    labels: dict = {},  # noqa: B006
    description: str = "",
):
    """Uploads a model to the local registry, as a new model or a new version of one.

    The local stand-in for GCPC's ``ModelUploadOp`` (which ``kfp.local`` cannot run): it
    registers the checked ``UnmanagedContainerModel`` (its ``uri``: the model directory,
    copied into the registry; its ``metadata.containerSpec``: the serving container) in the
    directory-based registry of ``components/stand_ins/registry.py``, with Vertex's rules for
    versions and aliases.

    Args:
        display_name: The display name of the model (1-128 characters).
        unmanaged_container_model: The contract check's ``google.UnmanagedContainerModel``
            (``system.Artifact`` is accepted too: kfp.local hands it on as one) with a local
            model directory as ``uri`` and ``metadata.containerSpec``.
        registry_dir: Directory of the local registry (created when missing).
        parent_model: Resource name of an existing model
            (``projects/local/locations/local/models/ID``, optionally ``@version``) to
            upload a new version of; empty uploads a new model. A string, since there is no
            ``VertexModel`` artifact locally.
        version_aliases: Aliases of the new version, e.g. ``["default", "v-2026-06-01"]``;
            as with ``ModelUploadOp``, a later version becomes the default only if
            ``default`` is among them (the first version always gets it).
        labels: Labels of the model version.
        description: The description of the model.

    Returns:
        model: The new version. ``metadata.resourceName`` is
            ``projects/local/locations/local/models/ID@VERSION`` (version-pinned, like GCPC's
            ``VertexModel``); ``metadata.registryDir`` the registry; ``uri`` is the
            version's directory in the registry.
    """
    from pathlib import Path

    from components.stand_ins import RegistryError, upload_model
    from components.vertex import UNMANAGED_CONTAINER_MODEL

    kind = unmanaged_container_model.schema_title
    if kind not in (UNMANAGED_CONTAINER_MODEL, "system.Artifact"):
        raise RegistryError(
            f"unmanaged_container_model is a {kind}; expected a {UNMANAGED_CONTAINER_MODEL} "
            "(the contract check's output)"
        )
    spec = unmanaged_container_model.metadata.get("containerSpec")
    if not spec:
        raise RegistryError(
            f"unmanaged_container_model ({unmanaged_container_model.uri}) has no "
            "metadata.containerSpec; pass the contract check's output"
        )
    version = upload_model(
        registry_dir,
        display_name,
        unmanaged_container_model.path,
        spec,
        parent_model=parent_model or None,
        version_aliases=version_aliases,
        labels=labels,
        description=description,
    )
    model.uri = str(version.model_dir.parent)
    model.metadata.update(
        {
            "resourceName": version.resource_name,
            "displayName": version.display_name,
            "versionId": version.version_id,
            "versionAliases": list(version.version_aliases),
            "parentModel": version.parent_model,
            "registryDir": str(Path(registry_dir).resolve()),
        }
    )
    print(
        f"registered {version.resource_name} (aliases: {', '.join(version.version_aliases)})"
        + (f", retrained from {version.parent_model}" if version.parent_model else "")
    )
