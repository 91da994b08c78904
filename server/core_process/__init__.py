"""The engine-core processes (`python -m server.core_process`), one per model: model, engine, scheduler,
executor (schedule -> execute -> update). Never imports the API side."""
