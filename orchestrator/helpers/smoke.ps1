<#
.SYNOPSIS
    keyfleet tool smoke test (keyfleet doctor --tool-smoke): which way of typing a password works.
.DESCRIPTION
    Sent after common.ps1 and conpty.ps1 as one script. -Params: tool_path, tool_timeout; needs no
    secret from keyfleet: it makes a throwaway random password here, runs a real
    "SecureStorageBackup.exe Backup <file>" into a private temporary folder with the password on
    stdin, then through a pseudo console, and deletes the file. The key in the registry is only
    read. Reports, per method, the tool's exit code and output, and the method that worked (or none).
#>
Assert-Administrator
$timeout = Get-ToolTimeout
$tool = Get-RequiredTool
# a throwaway password from the system's CSPRNG, base64 (printable ASCII), never sent anywhere
$random = New-Object byte[] 18
$rng = New-Object Security.Cryptography.RNGCryptoServiceProvider
$rng.GetBytes($random)
$rng.Dispose()
$throwaway = New-Object Security.SecureString
foreach ($randomChar in [Convert]::ToBase64String($random).ToCharArray()) { $throwaway.AppendChar($randomChar) }
$throwaway.MakeReadOnly()
$Secret = $throwaway
$attempts = New-Object Collections.Generic.List[hashtable]
$works = $null
foreach ($method in @('stdin', 'console')) {
    $folder = New-PrivateFolder
    try {
        $keyFile = Join-Path $folder 'smoke.bin'
        try {
            if ($method -eq 'stdin') { $run = Invoke-ToolStdin $tool 'Backup' $keyFile $timeout $true }
            else { $run = Invoke-ToolConsole $tool 'Backup' $keyFile $timeout }
            $wrote = [IO.File]::Exists($keyFile) -and ([IO.FileInfo]$keyFile).Length -gt 0
            $attempts.Add(@{ method = $method; exit = $run.exit; output = $run.output; stalled = [bool]$run['stalled']; wrote_file = $wrote })
            if ($run.exit -eq 0 -and $wrote) { $works = $method }
        }
        catch {
            $kind = $_.Exception.Data['KeyfleetKind']
            if (-not $kind) { $kind = 'remote' }
            $attempts.Add(@{ method = $method; exit = $null; output = $_.Exception.Message; kind = $kind; wrote_file = $false })
        }
    }
    finally {
        $cleanup = Remove-PrivateFolder $folder
    }
    if ($works) { break }
}
$result = @{
    tool_path      = $tool
    works          = $works
    attempts       = $attempts.ToArray()
    os_build       = [Environment]::OSVersion.Version.Build
    computer_name  = $env:COMPUTERNAME
    helper_version = $HelperVersion
}
if ($cleanup) { $result.cleanup_warning = $cleanup }
return $result
