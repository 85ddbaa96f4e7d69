"""The endpoint fastai users deploy: FastAPI calling fastai's `learn.predict` on the uploaded
bytes, one request at a time (run in fastai's venv). Usage: fastai_serve.py DATA SIZE PRESIZE
PORT"""

import sys
import threading
from typing import Annotated

import uvicorn
from fastai.vision.all import (
    ImageDataLoaders,
    PILImage,
    Resize,
    aug_transforms,
    resnet18,
    vision_learner,
)
from fastapi import FastAPI, File, UploadFile
from fastapi.responses import JSONResponse

path, size, presize, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dls = ImageDataLoaders.from_folder(path, train="train", valid="val", item_tfms=Resize(presize),
                                   batch_tfms=aug_transforms(size=size, min_scale=0.75), bs=64)
learn = vision_learner(dls, resnet18, pretrained=False)
lock = threading.Lock()  # learn.predict is not safe to call from several threads at once
app = FastAPI()


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}


@app.post("/predict")
def predict(file: Annotated[UploadFile, File()]) -> JSONResponse:
    data = file.file.read()
    try:
        img = PILImage.create(data)
    except Exception as e:  # noqa: BLE001 - a bad upload is the client's error
        return JSONResponse({"error": str(e)}, status_code=422)
    with lock, learn.no_bar():
        label, _, probs = learn.predict(img)
    return JSONResponse([{"labels": [str(label)], "prob": float(probs.max())}])


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
