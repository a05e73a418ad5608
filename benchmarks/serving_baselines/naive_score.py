"""The scoring script most samples ship: undecorated run(), numpy from JSON, Keras predict().

The baseline of benchmarks/serving_speed.py. Not for deployment: it answers bad input with
the server's 500 and pays Keras' predict() set-up on every request.
"""

import json
import os

import keras
import numpy as np

model = None


def init():
    global model
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "data", "model.keras")
    model = keras.models.load_model(path, compile=False)


def run(raw_data):
    data = np.array(json.loads(raw_data)["data"], dtype=np.float32)
    data = data.reshape(-1, *model.input_shape[1:])
    probabilities = model.predict(data)
    return {
        "predictions": probabilities.argmax(axis=1).tolist(),
        "probabilities": probabilities.tolist(),
    }
