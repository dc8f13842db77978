"""Request dependencies for what `create_app` puts on `app.state` (settings, store, task producer)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.queue import TaskProducer
from app.settings import Settings
from app.storage import Store


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_producer(request: Request) -> TaskProducer:
    producer: TaskProducer = request.app.state.producer
    return producer


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
ProducerDep = Annotated[TaskProducer, Depends(get_producer)]
