"""The project's container images, built without a Docker daemon or a public registry.

The operator's and the agent's Dockerfiles stay usable with ``docker buildx`` as they are;
here they are built with buildah, on a Debian base made from Debian's packages, for
linux/amd64 and linux/arm64 (arm64's few steps under qemu-user), and pushed to the project's
registry as image indexes tagged by their content. One place per concern:

- `recipe`: what goes into an image, its tag, the base's name, wheel tags (pure);
- `base`: the Debian base image (debootstrap), cached;
- `wheelhouse`: the pinned wheels, downloaded on the host before a build;
- `buildah`: the only module that runs buildah;
- `build`: the procedure, `build.build_images`; ``python -m wasmfleet_harness.images``;
- `distribution`: reading an index, manifests and blobs back from a registry;
- `rootfs`: running a program in an image's root as the chart runs it (read-only, non-root).
"""

__all__ = ["base", "build", "buildah", "distribution", "recipe", "rootfs", "wheelhouse"]
