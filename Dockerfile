# One image for every service (api, workers, ui). torch==2.13.0 from PyPI is the CUDA build on
# x86_64, so the same image serves the GPU workers.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN pip install torch==2.13.0
COPY pyproject.toml README.md alembic.ini ./
COPY core core
COPY backend backend
COPY client client
COPY cli cli
COPY worker worker
COPY ui ui
COPY migrations migrations
RUN pip install -e ".[s3]"
RUN useradd --create-home studio && mkdir -p /data && chown studio /data
USER studio
ENV DS_DATA_DIR=/data
EXPOSE 8000 8501
CMD ["distill-studio", "api", "--host", "0.0.0.0"]
