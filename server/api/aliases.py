"""Model names a client may send, and the route each one means.

A client that called Azure keeps sending its deployment name (``"model": "gpt-4o"``) after its base URL is
changed to this server. ``MSSERVE_MODEL_ALIASES`` maps such names to a route (auto, local, azure, cascade), and
the configured Azure deployment is an ``auto`` alias unless listed. The alias gives the same route value the
``x-msserve-route`` header would, so everything that looks at the route afterwards (the per-key permission to
force Azure among it) treats ``"model": "<azure alias>"`` exactly like ``x-msserve-route: azure``. The header wins
over the alias. The response's ``model`` still names the model that answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.api.deps import Services
from server.errors import NotFoundError
from server.routing.dispatch import parse_route


@dataclass(frozen=True)
class ModelNames:
    served: tuple[str, ...]  # the local model's names (served model name, profile name)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> route

    @classmethod
    def from_services(cls, services: Services) -> ModelNames:
        if services.model_names is not None:
            return services.model_names
        settings = services.settings
        served = tuple(dict.fromkeys([services.engine.name, services.profile.name]))
        aliases: dict[str, str] = {}
        if settings.azure_endpoint and settings.azure_deployment:
            aliases[settings.azure_deployment] = "auto"  # the router decides, as for a request naming no model
        aliases.update(settings.model_aliases)
        names = cls(served, {name: route for name, route in aliases.items() if name not in served})
        services.model_names = names
        return names

    @property
    def all(self) -> list[str]:
        return [*self.served, *self.aliases]

    def route(self, model: str | None, header: str | None) -> str | None:
        """The route for a request naming ``model`` with this ``x-msserve-route`` header; None: the default.

        404 ``model_not_found`` (listing every accepted name) for a name neither served nor aliased, whatever the
        header says; 400 ``invalid_route`` for a header that names no route.
        """
        if model and model not in self.served and model not in self.aliases:
            raise NotFoundError(
                f"model {model!r} is not served here; available: {', '.join(self.all)}",
                param="model",
                code="model_not_found",
            )
        if header is not None:
            return parse_route(header)
        if model in self.aliases:
            return self.aliases[model]
        return None


def check_served(model: str | None, services: Services) -> None:
    """For endpoints that name the local model only (captions): an alias stands for a route, not a model."""
    if model and model not in ModelNames.from_services(services).served:
        raise NotFoundError(f"model {model!r} is not served here", param="model", code="model_not_found")


def resolve_route(model: str | None, header: str | None, services: Services) -> str | None:
    return ModelNames.from_services(services).route(model, header)
