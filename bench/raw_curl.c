/*
 * raw_curl.c: the baseline of bench/run.
 *
 * Does what anthropic.env_get does per call, and nothing else: a GET of
 * BASE_URL/v1/environments/ID with the same headers, over ONE reused
 * libcurl easy handle (so the TCP connection is kept), then one jansson
 * parse of the body and a read of its "id".
 *
 * Usage: raw_curl BASE_URL COUNT ID_PREFIX [fixed]
 *   The id of call i (1..COUNT) is ID_PREFIX followed by i, or ID_PREFIX
 *   alone with "fixed".  The API key comes from ANTHROPIC_API_KEY.
 *
 * Prints one line:
 *   "calls=N ok=N missing=N total_us=T us_per_call=U cpu_us_per_call=C"
 * (C: user + system CPU time of this process per call).
 * Exits non-zero if any call fails (transport error, a status other than
 * 200 or 404, or a 200 body without a string "id").
 */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct Buffer
{
	char	   *data;
	size_t		len;
	size_t		cap;
} Buffer;

static size_t
write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	Buffer	   *buf = userdata;
	size_t		n = size * nmemb;

	if (buf->len + n + 1 > buf->cap)
	{
		size_t		newcap = buf->cap ? buf->cap * 2 : 8192;
		char	   *p;

		while (newcap < buf->len + n + 1)
			newcap *= 2;
		p = realloc(buf->data, newcap);
		if (p == NULL)
			return 0;
		buf->data = p;
		buf->cap = newcap;
	}
	memcpy(buf->data + buf->len, ptr, n);
	buf->len += n;
	return n;
}

static double
cpu_us(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
		ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int
main(int argc, char **argv)
{
	const char *base;
	const char *prefix;
	const char *key;
	long		count;
	int			fixed;
	char		url[2048];
	char		keyhdr[1024];
	struct curl_slist *headers = NULL;
	CURL	   *easy;
	Buffer		body = {0};
	long		ok = 0;
	long		missing = 0;
	double		t0;
	double		t1;
	double		c0;
	double		c1;

	if (argc < 4 || argc > 5)
	{
		fprintf(stderr, "usage: %s BASE_URL COUNT ID_PREFIX [fixed]\n", argv[0]);
		return 2;
	}
	base = argv[1];
	count = strtol(argv[2], NULL, 10);
	prefix = argv[3];
	fixed = argc == 5 && strcmp(argv[4], "fixed") == 0;
	key = getenv("ANTHROPIC_API_KEY");
	if (key == NULL || count <= 0)
	{
		fprintf(stderr, "raw_curl: need ANTHROPIC_API_KEY and COUNT > 0\n");
		return 2;
	}

	if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
		return 1;
	easy = curl_easy_init();
	if (easy == NULL)
		return 1;

	snprintf(keyhdr, sizeof(keyhdr), "x-api-key: %s", key);
	headers = curl_slist_append(headers, keyhdr);
	headers = curl_slist_append(headers, "anthropic-version: 2023-06-01");
	headers = curl_slist_append(headers, "anthropic-beta: managed-agents-2026-04-01");
	headers = curl_slist_append(headers, "Accept: application/json");
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, &body);
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
	/* As the extension does: no proxy from the environment. */
	curl_easy_setopt(easy, CURLOPT_PROXY, "");

	c0 = cpu_us();
	t0 = now_us();
	for (long i = 1; i <= count; i++)
	{
		CURLcode	rc;
		long		status = 0;

		if (fixed)
			snprintf(url, sizeof(url), "%s/v1/environments/%s", base, prefix);
		else
			snprintf(url, sizeof(url), "%s/v1/environments/%s%ld", base, prefix, i);
		curl_easy_setopt(easy, CURLOPT_URL, url);
		body.len = 0;
		rc = curl_easy_perform(easy);
		if (rc != CURLE_OK)
		{
			fprintf(stderr, "raw_curl: call %ld: %s\n", i, curl_easy_strerror(rc));
			return 1;
		}
		curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
		if (status == 404)
		{
			missing++;
			continue;
		}
		if (status != 200)
		{
			fprintf(stderr, "raw_curl: call %ld: HTTP status %ld\n", i, status);
			return 1;
		}
		{
			json_error_t jerr;
			json_t	   *root = json_loadb(body.data, body.len, 0, &jerr);
			json_t	   *id = root ? json_object_get(root, "id") : NULL;

			if (!json_is_string(id))
			{
				fprintf(stderr, "raw_curl: call %ld: body without a string id\n", i);
				return 1;
			}
			json_decref(root);
		}
		ok++;
	}
	t1 = now_us();
	c1 = cpu_us();

	printf("calls=%ld ok=%ld missing=%ld total_us=%.0f us_per_call=%.2f cpu_us_per_call=%.2f\n",
		   count, ok, missing, t1 - t0, (t1 - t0) / count, (c1 - c0) / count);

	curl_slist_free_all(headers);
	curl_easy_cleanup(easy);
	curl_global_cleanup();
	free(body.data);
	return 0;
}
