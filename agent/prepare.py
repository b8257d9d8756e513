"""Before anything stops: the image present by digest, its contract met, its tag still naming that digest.

An image already present by digest is not pulled again: the digest is its identity.
"""

from __future__ import annotations

from typing import Any

from . import contract
from .docker_errors import APIError, ImageNotFound
from .motion import StepFailed
from .vocabulary import Step


class Prepare:
    """Mixed into Transaction (and used alone by the `prepare` op on every host before any host swaps)."""

    client: Any
    args: dict[str, Any]

    def prepare(self, spec: dict, service: str, check_tag: bool = True):
        """The image by digest, its contract, and (check_tag) the tag still naming that digest.

        An image already present by digest is not pulled again: the digest is its identity.
        check_tag=False is for a swap whose controller ran the `prepare` op on every host just
        before: the registry was asked then, and the digest pins what runs either way.
        """
        digest = spec.get("digest") or ""
        repo, tag = spec["repo"], spec["tag"]
        ref = f"{repo}:{tag}"
        if not digest.startswith("sha256:"):
            raise StepFailed("digest", f"{ref}: the plan carries no digest; refusing to pull by tag (re-plan); nothing was stopped")
        self.j(Step.PULL, service, ref=ref, digest=digest)
        try:
            image = self.client.images.get(f"{repo}@{digest}")
        except ImageNotFound:
            try:
                image = self.client.images.pull(repo, tag=digest)
            except APIError as exc:
                raise StepFailed("pull", f"could not pull {repo}@{digest}: {exc.explanation or exc}; nothing was stopped") from None
        if check_tag:
            self._tag_still_names(ref, digest)
        image.tag(repo, tag)
        cfg = image.attrs.get("Config") or {}
        problems = contract.image_problems(cfg.get("User") or "", cfg.get("Entrypoint"))
        if problems:
            detail, _fix = problems[0]
            check = "image-user" if "user" in detail else "image-entrypoint"
            raise StepFailed(check, f"{ref} {detail}; refused, nothing was stopped")
        return image, (cfg.get("Labels") or {}).get(contract.REVISION, "")

    def _tag_still_names(self, ref: str, digest: str) -> None:
        from .registry import RegistryClient, RegistryError

        try:
            now = RegistryClient(insecure=bool(self.args.get("insecure_registry")), timeout=5).digest(ref)
        except RegistryError as exc:
            raise StepFailed("registry", f"could not confirm that {ref} still names {digest}: {exc}; nothing was stopped") from None
        if now != digest:
            raise StepFailed("digest", f"{ref} now names {now}, not the planned {digest} (the tag was re-pushed after"
                                       " planning); nothing was stopped — re-plan and roll out again")
