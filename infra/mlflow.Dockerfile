# MLflow tracking server image for infra/k8s/mlflow.yaml: the official MLflow image (same version as the package's
# client) plus the PostgreSQL driver and boto3 for S3 artifacts. Not built in this repository's CI (no Docker engine).
#   docker build -f infra/mlflow.Dockerfile -t ghcr.io/YOUR-ORG/crfgan-mlflow:3.17.2 infra
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir psycopg2-binary boto3 \
 && useradd --uid 1000 --create-home mlflow
USER 1000
ENTRYPOINT ["mlflow"]
